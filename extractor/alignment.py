"""Words to subwords: tokenize the corpus once, map each subword to its word.

Tokenizing is cheap next to the forward pass, so it is done up front: the
store's shape (how many tokens each sentence contributes) is known before the
first forward pass and no array is ever resized.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

WORD_VECTORS = ("last", "first", "mean", "subword")


@dataclass
class Encoded:
    """The tokenized corpus."""

    input_ids: list[np.ndarray]  # per sentence, special tokens included
    word_ids: list[np.ndarray]  # per sentence, word index of each subword, -1 for special tokens
    skipped: np.ndarray  # bool per sentence: longer than the model accepts
    replaced_words: int  # words the tokenizer mapped to nothing, tokenized as its unk token


def tokenize_corpus(tokenizer, sentences: list[list[str]], max_len: int | None, batch: int = 2048) -> Encoded:
    """Tokenize pre-split sentences; mark sentences over ``max_len`` as skipped.

    Never truncates: a sentence too long for the model is skipped whole and
    counted (``inspect`` reports the count).
    """
    from transformers.utils import logging as hf_logging

    # transformers warns about sequences over model_max_length; strata skips
    # and counts those itself, so the warning would only confuse.
    hf_logging.set_verbosity_error()
    input_ids, word_ids, replaced = [], [], 0
    # split_special_tokens: a corpus word spelled like a control token ("[SEP]", "<pad>",
    # "<s>") is text and is tokenized as text.  Without it the model read a real
    # separator mid-sentence, and RoBERTa, whose positions count the non-pad ids, gave
    # every later word its neighbour's position.
    call = dict(is_split_into_words=True, add_special_tokens=True, truncation=False, split_special_tokens=True)
    for lo in range(0, len(sentences), batch):
        chunk = sentences[lo:lo + batch]
        enc = tokenizer(chunk, **call)
        for i, words in enumerate(chunk):
            ids, wids = enc["input_ids"][i], enc.word_ids(i)
            present = {w for w in wids if w is not None}
            if len(present) < len(words):
                # Some words (e.g. a lone zero-width character) yield no subword;
                # give them the unk token so every word keeps a vector.
                missing = set(range(len(words))) - present
                replaced += len(missing)
                ids, wids = _unknown_in_place(tokenizer, words, missing, call)
            input_ids.append(np.asarray(ids, dtype=np.int64))
            word_ids.append(np.asarray([-1 if w is None else w for w in wids], dtype=np.int64))
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
    skipped = lengths > max_len if max_len else np.zeros(len(input_ids), dtype=bool)
    return Encoded(input_ids, word_ids, skipped, replaced)


def _unknown_in_place(tokenizer, words: list[str], missing: set[int], call: dict) -> tuple[list, list]:
    """Ids and word ids of ``words`` with every word in ``missing`` as one unk id.

    The missing words are tokenized as a plain placeholder (``?``, one word of text),
    whose subwords are then replaced by the unk id: the unk token's own spelling would
    be split like any other text under ``split_special_tokens``.  A tokenizer without
    an unk token keeps the placeholder's subwords.
    """
    one = tokenizer([[("?" if j in missing else w) for j, w in enumerate(words)]], **call)
    unk = tokenizer.unk_token_id
    if unk is None:
        return one["input_ids"][0], one.word_ids(0)
    ids, wids = [], []
    for token, w in zip(one["input_ids"][0], one.word_ids(0)):
        if w in missing:
            if wids and wids[-1] == w:
                continue  # the placeholder's further subwords
            token = unk
        ids.append(token)
        wids.append(w)
    return ids, wids


def tokens_sha256(enc: Encoded) -> str:
    """Hash of every sentence's subword ids and their words: what the tokenizer made of
    this corpus.  A resume compares it, so a tokenizer changed since the crash (another
    vocabulary under the same path) is refused even where it keeps every length; the
    tokenizer's own files would also change with a ``tokenizers`` upgrade that tokenizes
    the same."""
    digest = hashlib.sha256()
    for ids, wids in zip(enc.input_ids, enc.word_ids):
        digest.update(np.int64(len(ids)).tobytes())
        digest.update(ids.astype(np.int64).tobytes())
        digest.update(wids.astype(np.int64).tobytes())
    return digest.hexdigest()


def tokens_per_sentence(enc: Encoded, sentences: list[list[str]], word_vector: str) -> np.ndarray:
    """How many stored tokens each sentence contributes (0 when skipped)."""
    if word_vector == "subword":
        counts = np.array([int((w >= 0).sum()) for w in enc.word_ids], dtype=np.int64)
    else:
        counts = np.array([len(s) for s in sentences], dtype=np.int64)
    counts[enc.skipped] = 0
    return counts


def subword_positions(word_ids: np.ndarray, word_vector: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions to read and the stored token each one feeds.

    Returns ``(positions, target)``: hidden state at ``positions[j]`` goes to
    stored token ``target[j]`` of the sentence (averaged when several map to
    the same target, which only ``mean`` does).  Subwords of a word are
    contiguous, so a word's first/last subword is where its id starts/ends.
    """
    positions = np.flatnonzero(word_ids >= 0)
    words = word_ids[positions]
    if word_vector == "subword":
        return positions, np.arange(len(positions))
    if word_vector == "mean":
        return positions, words
    starts = np.r_[True, words[1:] != words[:-1]]
    ends = np.r_[words[1:] != words[:-1], True]
    keep = starts if word_vector == "first" else ends
    return positions[keep], words[keep]


def cls_position(input_ids: np.ndarray, word_ids: np.ndarray, cls_token_id: int | None) -> int:
    """Where the sentence vector is read for ``cls`` pooling.

    The tokenizer's CLS token when the sequence has one (BERT, RoBERTa's <s>,
    XLNet's trailing <cls>); otherwise the first token (GPT-2).
    """
    if cls_token_id is not None:
        hits = np.flatnonzero((input_ids == cls_token_id) & (word_ids < 0))
        if len(hits):
            return int(hits[0])
    return 0
