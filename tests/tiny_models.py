"""Tiny, offline, deterministic Hugging Face models for tests.

Each ``build_tiny_*`` function trains a small fast tokenizer with the
``tokenizers`` library on the built-in English corpus below, wraps it in the
matching ``transformers`` tokenizer class, builds a randomly initialised model
(seeded with ``torch.manual_seed``) and saves both into ``directory`` so that
``AutoModel.from_pretrained(directory)`` and
``AutoTokenizer.from_pretrained(directory)`` work without any network access.

Sizes: hidden size 32, 2 layers, 2 attention heads, intermediate size 64.
Vocabularies are deliberately small (BERT: 600 WordPiece entries; GPT-2 and
RoBERTa: 800 byte-level BPE entries, of which 256 are the byte alphabet) so that
ordinary English words are often split into several subwords (roughly a third
to a half of the words of a sentence not in the corpus), while very common
words ("the", "was", "for") stay whole.

Tokenizer behaviour
-------------------
* BERT: WordPiece, **lowercasing** (``do_lower_case=True``, accents stripped, as
  in ``bert-base-uncased``). Special tokens ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
  [MASK]=4``; single sequences are encoded as ``[CLS] ... [SEP]``.
* GPT-2: byte-level BPE, ``<|endoftext|>`` (id 0) is bos/eos/unk. No special
  tokens are added when encoding. ``add_prefix_space=True`` is saved in the
  tokenizer config so ``is_split_into_words=True`` works out of the box. By
  default no pad token is set (like the real ``gpt2``); pass
  ``pad_token=True`` to use ``<|endoftext|>`` as pad token.
* RoBERTa: byte-level BPE, special tokens ``<s>=0 <pad>=1 </s>=2 <unk>=3
  <mask>=4`` (same ids as ``roberta-base``); single sequences are encoded as
  ``<s> ... </s>``. ``add_prefix_space=True`` is saved in the tokenizer config.
  ``max_position_embeddings = max_positions + 2`` because RoBERTa position ids
  start at ``pad_token_id + 1``.

For GPT-2 and RoBERTa the saved ``add_prefix_space=True`` also applies to
plain-text input: ``tok("The cat")`` encodes like ``" The cat"``.

For every model, the tokenizer's ``model_max_length`` equals ``max_positions``:
a sequence of exactly ``max_positions`` tokens (special tokens included) fits.

Files written (transformers 5.x): ``config.json``, ``model.safetensors``,
``tokenizer.json`` and ``tokenizer_config.json``; transformers 5 no longer
writes ``vocab.txt`` / ``vocab.json`` / ``merges.txt``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = [
    "CORPUS",
    "HIDDEN_SIZE",
    "NUM_LAYERS",
    "NUM_HEADS",
    "INTERMEDIATE_SIZE",
    "build_tiny_bert",
    "build_tiny_gpt2",
    "build_tiny_roberta",
]

HIDDEN_SIZE = 32
NUM_LAYERS = 2
NUM_HEADS = 2
INTERMEDIATE_SIZE = 64

WORDPIECE_VOCAB_SIZE = 600
BPE_VOCAB_SIZE = 800

# A small built-in corpus of ordinary English (with punctuation, digits and
# some capitalised words). Training data for all tokenizers; never read from
# disk or network.
CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A cat sat on the mat, and the dog slept by the door.",
    "She walked to the market early in the morning to buy fresh bread.",
    "We were happy when the rain finally stopped and the sun came out.",
    "Do you know where the nearest train station is?",
    "My brother works at a small hospital in the city.",
    "They played football in the park after school on Friday.",
    "The children laughed, sang songs and ate cake at the party.",
    "I think it will be cold tomorrow, so bring a warm coat.",
    "He read the newspaper while drinking a cup of coffee.",
    "Our teacher asked us to write a short story about a journey.",
    "The old house at the end of the street has a red door.",
    "Please close the window before you leave the room.",
    "There are seven days in a week and twelve months in a year.",
    "It was the best of times, it was the worst of times.",
    "Many people like to travel during the summer holidays.",
    "The doctor said that he should rest for a few days.",
    "Can you help me carry these heavy boxes upstairs?",
    "The river flows slowly through the green valley.",
    "We watched a film about a young girl who wanted to fly.",
    "After dinner, they talked about their plans for the future.",
    "The shop was closed because it was a public holiday.",
    "Birds were singing in the trees outside my window.",
    "Her favourite colour is blue, but she also likes yellow.",
    "The meeting starts at ten o'clock and ends at noon.",
    "If you have any questions, don't hesitate to ask.",
    "The garden is full of flowers in the spring.",
    "He forgot his keys, so he had to wait outside for an hour.",
    "The little boy found a shiny coin under the table.",
    "Everyone agreed that the food was delicious.",
    "Mary and John visited London and Paris last year.",
    "The computer was slow, but it still worked well enough.",
    "Good morning! How are you feeling today?",
    "The students listened carefully to the long lecture.",
    "Water boils at one hundred degrees, but ice melts at zero.",
    "She opened the letter and smiled at the good news.",
    "We need 3 eggs, 2 cups of flour and some milk.",
    "The mountains were covered with snow all winter.",
    "Thank you very much for your kind words and support.",
    "The government announced new rules for drivers yesterday.",
    "Reading books is a wonderful way to learn about the world.",
    "The baby was sleeping quietly in her mother's arms.",
    "He runs every evening because he wants to stay healthy.",
    "Scientists discovered a strange animal in the deep ocean.",
    "The village is small, quiet and very beautiful.",
    "I can't believe how quickly the year has passed!",
)

_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_GPT2_SPECIALS = ("<|endoftext|>",)
_ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def _prepare_dir(directory) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_max_positions(max_positions: int) -> None:
    if not isinstance(max_positions, int) or max_positions < 4:
        raise ValueError(f"max_positions must be an int >= 4, got {max_positions!r}")


def _train_wordpiece_vocab() -> dict[str, int]:
    """Train a lowercasing WordPiece vocabulary (BERT-style) on CORPUS."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The trainer assigns ids to the "##x" continuation symbols in (Rust) hash
    # map order, which varies between processes and, via tie-breaking on ids,
    # changes the learned merges. Registering every "##x" up front (sorted)
    # pins their ids, which makes training reproducible across processes.
    chars = sorted(set(tok.normalizer.normalize_str(" ".join(CORPUS))) - {" "})
    continuation = [f"##{c}" for c in chars]
    trainer = WordPieceTrainer(
        vocab_size=WORDPIECE_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(_BERT_SPECIALS) + continuation,
        show_progress=False,
        continuing_subword_prefix="##",
    )
    tok.train_from_iterator(list(CORPUS), trainer=trainer)
    return dict(sorted(tok.get_vocab().items(), key=lambda kv: kv[1]))


def _bpe_training_texts() -> list[str]:
    """CORPUS plus a copy with punctuation detached by a space.

    With ``is_split_into_words=True`` every word (punctuation included) gets a
    prefix space, so this teaches the BPE tokens such as ``"Ġ."`` / ``"Ġ,"``
    (as in the real GPT-2 vocabulary) instead of splitting ``"."`` into
    ``"Ġ"`` + ``"."``.
    """
    detached = [re.sub(r"([.,!?])", r" \1", s) for s in CORPUS]
    return list(CORPUS) + detached


def _train_byte_level_bpe(special_tokens) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE (GPT-2/RoBERTa-style) on CORPUS.

    Returns ``(vocab, merges)``; the special tokens get the first ids in the
    given order, followed by the 256-symbol byte alphabet and the merges.
    """
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_bpe_training_texts(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_bert(directory, *, max_positions: int = 64, seed: int = 0) -> Path:
    """Build and save a tiny ``BertModel`` + lowercasing WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    _check_max_positions(max_positions)
    path = _prepare_dir(directory)
    vocab = _train_wordpiece_vocab()
    tokenizer = BertTokenizerFast(
        vocab=vocab,
        do_lower_case=True,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=max_positions,
    )
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
        max_position_embeddings=max_positions,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=True).eval()
    return _save(model, tokenizer, path)


def build_tiny_gpt2(
    directory, *, max_positions: int = 64, seed: int = 0, pad_token: bool = False
) -> Path:
    """Build and save a tiny ``GPT2Model`` + byte-level BPE tokenizer.

    ``pad_token=True`` sets ``<|endoftext|>`` as the pad token (the real ``gpt2``
    checkpoint has none, hence the default ``False``).
    """
    import torch
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    _check_max_positions(max_positions)
    path = _prepare_dir(directory)
    vocab, merges = _train_byte_level_bpe(_GPT2_SPECIALS)
    eot = _GPT2_SPECIALS[0]
    tokenizer = GPT2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot if pad_token else None,
        add_prefix_space=True,
        model_max_length=max_positions,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_positions,
        n_embd=HIDDEN_SIZE,
        n_layer=NUM_LAYERS,
        n_head=NUM_HEADS,
        n_inner=INTERMEDIATE_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if pad_token else None,
    )
    torch.manual_seed(seed)
    model = GPT2Model(config).eval()
    return _save(model, tokenizer, path)


def build_tiny_roberta(directory, *, max_positions: int = 64, seed: int = 0) -> Path:
    """Build and save a tiny ``RobertaModel`` + byte-level BPE tokenizer."""
    import torch
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    _check_max_positions(max_positions)
    path = _prepare_dir(directory)
    vocab, merges = _train_byte_level_bpe(_ROBERTA_SPECIALS)
    tokenizer = RobertaTokenizerFast(
        vocab=vocab,
        merges=merges,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        add_prefix_space=True,
        trim_offsets=True,
        model_max_length=max_positions,
    )
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
        # RoBERTa position ids start at pad_token_id + 1 (= 2).
        max_position_embeddings=max_positions + tokenizer.pad_token_id + 1,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = RobertaModel(config, add_pooling_layer=True).eval()
    return _save(model, tokenizer, path)
