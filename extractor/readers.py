"""Readers for the corpus formats strata accepts.

Every reader turns one corpus file (plus, for NeuroX, its parallel labels
file) into the same in-memory :class:`Corpus`: the words of each sentence and
any labels attached to words or to whole sentences. The rest of strata only
ever sees a ``Corpus``, so adding a format means adding one reader here.

Formats (``fmt`` argument of :func:`read_corpus`):

``conllu``
    Universal Dependencies CoNLL-U. ``#`` lines are comments, a blank line
    ends a sentence, token lines have exactly 10 tab-separated columns, and the
    word IDs of a sentence run 1, 2, 3, ... (an ID that starts again at 1 is a
    missing blank line: two sentences would merge).  Multiword-token ranges
    (ID ``3-4``: the surface token, e.g. "can't"; it must start at the next word ID
    and its words must follow) and empty nodes (ID ``8.1``, after word 8: not in the
    text) are skipped, and any other ID with ``-`` or ``.`` is an error; the model reads the syntactic words the
    treebank splits a multiword token into ("ca", "n't"), the units UPOS
    labels. Words are FORM; token label sets ``upos``, ``xpos`` and ``deprel``,
    whose values may not start or end with whitespace (``NOUN `` would be a
    class of its own).
``conll``
    Whitespace-separated columns, blank line between sentences. ``columns``
    names the columns; exactly one must be ``word``, every other becomes a
    token label set. Lines whose first column is ``-DOCSTART-`` (CoNLL-2003
    document markers, with or without the other columns) are skipped, since they
    are not sentences.
``neurox``
    NeuroX parallel files: one sentence per line in ``path`` and one line of
    labels per sentence in ``labels_path``. If every labels line holds one
    label while some sentence has several tokens, the labels belong to
    sentences; otherwise there is one label per token.
``senteval``
    SentEval probing TSV: ``split<TAB>label<TAB>sentence`` with split one of
    ``tr``, ``va``, ``te``. Sentence label sets ``label`` and ``split``.
``text``
    Plain text, one sentence per line, no labels.

Line rules shared by all formats:

* Files are UTF-8 (a leading byte-order mark is ignored; one at the start of a
  later line, as ``cat`` of two such files leaves, is an error); ``\\n`` and
  ``\\r\\n`` line endings are both accepted, a lone ``\\r`` (old Mac endings) is
  an error.  Input must be a regular file: it is read twice (parsed, then hashed),
  and a pipe gives its bytes only once.
* "Whitespace" means what :meth:`str.split` splits on.
* In the line-per-sentence formats (``neurox``, ``senteval``, ``text``) every
  line is a sentence, so any blank or whitespace-only line is an error, even
  at the end of the file (with ``max_sentences``: any such line among the
  sentences kept; the lines after them are counted, not checked). The newline
  that ends the last line does not make an extra line, so a normal trailing
  newline is fine.
* In the block formats (``conllu``, ``conll``) blank or whitespace-only lines
  separate sentences; any number of them may appear anywhere.

Every problem is reported as a :class:`StrataError` whose one-line message
starts with the file path (``PATH:LINE: ...`` when a line is at fault) or
with the command-line parameter at fault (``--columns: ...``).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import BinaryIO

from store.errors import StrataError

FORMATS = ("conllu", "conll", "neurox", "senteval", "text")

# CoNLL-U column names, used to say which column is empty in error messages.
_CONLLU_COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
# Token label sets taken from CoNLL-U, by column index, in the order shown to users.
_CONLLU_LABEL_COLUMNS = {"upos": 3, "xpos": 4, "deprel": 7}

_SENTEVAL_SPLITS = ("tr", "va", "te")

# CoNLL-2003 style files start each document with this pseudo-token line.
_DOCSTART = "-DOCSTART-"

# CoNLL-U IDs that are not words: a multiword token's range (3-4) and an empty node (8.1).
_MULTIWORD_ID = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)")
_EMPTY_NODE_ID = re.compile(r"(0|[1-9][0-9]*)\.([1-9][0-9]*)")


@dataclass
class Corpus:
    """A corpus held in memory, whatever format it was read from.

    ``token_labels[name][i][j]`` is the label of word ``j`` of sentence ``i``
    in label set ``name``; ``sentence_labels[name][i]`` is the label of
    sentence ``i``. Both dicts keep the order the label sets were found in.
    ``sha256`` covers the input file's bytes followed by the labels file's
    bytes (NeuroX only), so it identifies exactly what was read.
    """

    sentences: list[list[str]]
    token_labels: dict[str, list[list[str]]]
    sentence_labels: dict[str, list[str]]
    sha256: str
    path: str


def read_corpus(path, fmt, *, columns=None, labels_path=None, max_sentences=None) -> Corpus:
    """Read the corpus at ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    ``columns`` (conll only) lists the column names, as a list or a
    comma-separated string. ``labels_path`` (neurox only) is the parallel
    labels file. ``max_sentences``, if given, keeps only the first that many
    sentences (and their labels). The CoNLL and SentEval readers stop
    reading there; the line-per-sentence readers (text, neurox) still scan
    the rest to count lines, which NeuroX needs to check that its two files
    are parallel.

    Raises :class:`StrataError` for any bad parameter or malformed input.
    """
    path = os.fspath(path)
    if labels_path is not None:
        labels_path = os.fspath(labels_path)
    _check_parameters(fmt, columns, labels_path, max_sentences)
    _require_regular_file(path, "input file")
    if labels_path is not None:
        _require_regular_file(labels_path, "labels file")

    if fmt == "conllu":
        sentences, token_labels, sentence_labels = _read_conllu(path, max_sentences)
    elif fmt == "conll":
        sentences, token_labels, sentence_labels = _read_conll(path, _parse_columns(columns), max_sentences)
    elif fmt == "neurox":
        sentences, token_labels, sentence_labels = _read_neurox(path, labels_path, max_sentences)
    elif fmt == "senteval":
        sentences, token_labels, sentence_labels = _read_senteval(path, max_sentences)
    else:  # "text"
        sentences, _ = _read_line_rows(path, "input file", max_sentences, "empty sentence")
        token_labels, sentence_labels = {}, {}

    if not sentences:
        raise StrataError(f"{path}: empty file, no sentences found")

    # Hash in a separate chunked pass rather than while parsing: the parse may
    # stop early (max_sentences), yet the hash must cover the whole input file
    # and then the whole labels file. Re-reading costs one sequential read.
    hashed = [path] if labels_path is None else [path, labels_path]
    return Corpus(
        sentences=sentences,
        token_labels=token_labels,
        sentence_labels=sentence_labels,
        sha256=_sha256_of_files(hashed),
        path=path,
    )


# --- parameters -------------------------------------------------------------


def _check_parameters(fmt, columns, labels_path, max_sentences) -> None:
    """Reject parameters that are wrong before any file is opened."""
    if fmt not in FORMATS:
        raise StrataError(f"--format: unknown format {fmt!r}, expected one of {', '.join(FORMATS)}")
    if fmt == "conll" and columns is None:
        raise StrataError("--columns: required for the conll format (e.g. --columns word,pos,chunk)")
    if fmt != "conll" and columns is not None:
        raise StrataError(f"--columns: only used by the conll format, not {fmt}")
    if fmt == "neurox" and labels_path is None:
        raise StrataError(
            "--labels: required for the neurox format (the file of labels parallel to the input)"
        )
    if fmt != "neurox" and labels_path is not None:
        raise StrataError(f"--labels: only used by the neurox format, not {fmt}")
    if max_sentences is not None:
        # bool is an int subclass; True must not silently mean "1 sentence".
        if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences <= 0:
            raise StrataError(f"--max-sentences: must be a positive integer, got {max_sentences!r}")


#: A column name becomes part of an array name (``label_<name>``), so it must be
#: one safe path segment: no ``/``, no ``.`` or ``..``, no spaces.
_COLUMN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _parse_columns(columns) -> list[str]:
    """Validate the conll column names; accept a list or ``"word,pos"``."""
    if isinstance(columns, str):
        columns = columns.split(",")
    names = [str(name).strip() for name in columns]
    shown = ",".join(names)
    if not all(names):
        raise StrataError(f"--columns: empty column name in {shown!r}")
    for name in names:
        if not _COLUMN_NAME.fullmatch(name):
            raise StrataError(f"--columns: {name!r} is not a valid column name "
                              "(use letters, digits, '_' and '-')")
    if names.count("word") != 1:
        raise StrataError(f"--columns: must name exactly one 'word' column, got {shown!r}")
    for name in names:
        if names.count(name) > 1:
            raise StrataError(f"--columns: duplicate column name {name!r}")
    return names


# --- low-level file access --------------------------------------------------


def _open_binary(path: str, role: str) -> BinaryIO:
    """Open ``path`` for reading bytes, turning OS errors into one-liners.

    ``role`` ("input file" or "labels file") tells the user which of the
    files given on the command line is at fault.
    """
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise StrataError(f"{role} not found: {path}") from None
    except IsADirectoryError:
        raise StrataError(f"{role} is a directory: {path}") from None
    except OSError as e:
        raise StrataError(f"{role} not readable: {path} ({e.strerror or e})") from None


def _require_regular_file(path: str, role: str) -> None:
    """Refuse a pipe or device (``--input <(zcat x.gz)``): the file is read twice, once to
    parse and once to hash, and the second read of a pipe is empty, which recorded the
    hash of nothing as the dataset's."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # _open_binary names what is wrong
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise StrataError(f"{role} is not a regular file (a pipe?): {path}; strata reads it twice, to parse and "
                          "to hash it: write it to a file first")


def _iter_raw(path: str, role: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, bytes)`` for each line, its line ending included."""
    with _open_binary(path, role) as f:
        yield from enumerate(f, start=1)


def _decoded(path: str, lineno: int, raw: bytes) -> str:
    """One line as text, without its line ending.

    Each line is decoded on its own, so that a bad byte can be reported with its
    line number. Splitting bytes on ``\\n`` is safe because that byte never occurs
    inside a multi-byte UTF-8 character.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StrataError(
            f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        ) from None
    if text.startswith("\ufeff"):
        if lineno > 1:
            raise StrataError(f"{path}:{lineno}: a byte-order mark starts this line (two files joined with cat?)")
        text = text[1:]  # a byte-order mark is not part of the first word
    text = text.removesuffix("\n").removesuffix("\r")  # one line ending, not every CR before it
    if "\r" in text:  # str.split would take it for a space and join the lines around it
        raise StrataError(f"{path}:{lineno}: a carriage return inside the line (old Mac line endings?); "
                          "lines must end in \\n or \\r\\n")
    return text


def _iter_lines(path: str, role: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, without its line ending; one line
    is held at a time."""
    for lineno, raw in _iter_raw(path, role):
        yield lineno, _decoded(path, lineno, raw)


def _iter_blocks(path: str) -> Iterator[list[tuple[int, str]]]:
    """Yield the blank-line-separated blocks of a file as lists of numbered lines.

    Used by the CoNLL formats, where a block is one sentence. Runs of blank
    lines and a missing final blank line both need no special handling.
    """
    block: list[tuple[int, str]] = []
    for lineno, line in _iter_lines(path, "input file"):
        if line.strip():
            block.append((lineno, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _read_line_rows(path: str, role: str, max_rows, empty_message: str) -> tuple[list[list[str]], list[int]]:
    """Read a one-row-per-line file, each row split on whitespace.

    Returns the first ``max_rows`` rows (all if None) and the number of whitespace-separated
    fields of every line of the file, kept or not: NeuroX needs to check that its two files
    are parallel, and to decide whether its labels are per token or per sentence, from the
    whole files even when only a prefix is kept.  A blank kept line is an error with
    ``empty_message``; the lines past the prefix are not checked (decoded leniently, counted
    only).
    """
    rows: list[list[str]] = []
    lines = _iter_raw(path, role)
    for lineno, raw in islice(lines, max_rows):
        words = _decoded(path, lineno, raw).split()
        if not words:
            raise StrataError(f"{path}:{lineno}: {empty_message}")
        rows.append(words)
    widths = [len(row) for row in rows] + [len(raw.decode("utf-8", "replace").split()) for _, raw in lines]
    return rows, widths


def _sha256_of_files(paths: list[str]) -> str:
    """sha256 of the concatenated bytes of ``paths``, read in chunks."""
    hasher = hashlib.sha256()
    for path, role in zip(paths, ("input file", "labels file")):
        with _open_binary(path, role) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                hasher.update(chunk)
    return hasher.hexdigest()


# --- format readers ---------------------------------------------------------
# Each returns (sentences, token_labels, sentence_labels).


def _read_conllu(path: str, max_sentences):
    """Read CoNLL-U: words are FORM, token labels UPOS, XPOS and DEPREL."""
    sentences: list[list[str]] = []
    token_labels: dict[str, list[list[str]]] = {name: [] for name in _CONLLU_LABEL_COLUMNS}
    for block in _iter_blocks(path):
        words: list[str] = []
        labels: dict[str, list[str]] = {name: [] for name in _CONLLU_LABEL_COLUMNS}
        open_range = None  # (line, ID, last word) of the latest multiword range
        for lineno, line in block:
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise StrataError(f"{path}:{lineno}: expected 10 tab-separated columns, found {len(fields)}")
            for name, value in zip(_CONLLU_COLUMNS, fields):
                if not value:
                    raise StrataError(f"{path}:{lineno}: empty {name} column")
            # A multiword range is the surface token the following lines split into
            # syntactic words (the units the labels belong to), and an empty node is
            # not in the text at all: neither is a word of its own.
            expected = len(words) + 1
            if multiword := _MULTIWORD_ID.fullmatch(fields[0]):
                start, end = int(multiword[1]), int(multiword[2])
                if start != expected or end <= start:
                    raise StrataError(f"{path}:{lineno}: multiword range {fields[0]!r}, expected "
                                      f"{expected}-N with N > {expected}")
                open_range = (lineno, fields[0], end)
                continue
            if empty_node := _EMPTY_NODE_ID.fullmatch(fields[0]):
                if int(empty_node[1]) != len(words):
                    raise StrataError(f"{path}:{lineno}: empty node {fields[0]!r}, expected {len(words)}.N "
                                      f"(after word {len(words)})")
                continue
            if "-" in fields[0] or "." in fields[0]:
                raise StrataError(f"{path}:{lineno}: word ID {fields[0]!r} is not a word ID, a multiword range "
                                  "(3-4) or an empty node (8.1)")
            if fields[0] != str(expected):
                hint = " (a missing blank line between two sentences?)" if fields[0] == "1" else ""
                raise StrataError(f"{path}:{lineno}: word ID {fields[0]!r}, expected {expected}{hint}")
            words.append(fields[1])
            for name, column in _CONLLU_LABEL_COLUMNS.items():
                value = fields[column]
                if value != value.strip():  # 'NOUN' and 'NOUN ' would become two classes
                    raise StrataError(f"{path}:{lineno}: {_CONLLU_COLUMNS[column]} {value!r} has leading or "
                                      "trailing whitespace")
                labels[name].append(value)
        if not words:
            # A block of comments only: point at where it starts.
            raise StrataError(f"{path}:{block[0][0]}: empty sentence")
        if open_range and open_range[2] > len(words):  # its surface form would vanish with no word of its own
            raise StrataError(f"{path}:{open_range[0]}: multiword range {open_range[1]!r}, but the sentence "
                              f"ends at word {len(words)}")
        sentences.append(words)
        for name, values in labels.items():
            token_labels[name].append(values)
        if len(sentences) == max_sentences:
            break
    return sentences, token_labels, {}


def _read_conll(path: str, columns: list[str], max_sentences):
    """Read whitespace-separated CoNLL columns named by ``columns``."""
    word_index = columns.index("word")
    label_columns = {name: i for i, name in enumerate(columns) if name != "word"}
    sentences: list[list[str]] = []
    token_labels: dict[str, list[list[str]]] = {name: [] for name in label_columns}
    for block in _iter_blocks(path):
        words: list[str] = []
        labels: dict[str, list[str]] = {name: [] for name in label_columns}
        for lineno, line in block:
            fields = line.split()
            if fields[0] == _DOCSTART:  # with its columns (-DOCSTART- -X- O) or alone
                continue
            if len(fields) != len(columns):
                raise StrataError(
                    f"{path}:{lineno}: expected {len(columns)} whitespace-separated columns "
                    f"({' '.join(columns)}), found {len(fields)}"
                )
            words.append(fields[word_index])
            for name, column in label_columns.items():
                labels[name].append(fields[column])
        if not words:
            continue  # the block held only a -DOCSTART- marker
        sentences.append(words)
        for name, values in labels.items():
            token_labels[name].append(values)
        if len(sentences) == max_sentences:
            break
    return sentences, token_labels, {}


def _read_neurox(path: str, labels_path: str, max_sentences):
    """Read NeuroX parallel sentence and label files.

    Labels are per sentence when every line of the labels file has one label and some
    sentence of the input file has more than one word (a corpus of one-word sentences is
    read as token labels), decided on the whole files, whatever ``max_sentences`` keeps.
    """
    sentences, sentence_widths = _read_line_rows(path, "input file", max_sentences, "empty sentence")
    label_rows, label_widths = _read_line_rows(
        labels_path, "labels file", max_sentences, "empty line, expected labels"
    )
    # Check whole-file line counts first: if the files are not parallel, the
    # per-line token counts below would only report a symptom.
    if len(sentence_widths) != len(label_widths):
        raise StrataError(
            f"{labels_path}: {len(label_widths)} lines, but {path} has {len(sentence_widths)}; "
            "expected one labels line per sentence line"
        )

    # One label per line could mean one label per sentence or a corpus of
    # one-word sentences; only a longer sentence tells them apart.  Decided on the whole
    # files (a blank line past the prefix aside), so that --max-sentences keeps the level
    # of the full run: decided on the kept prefix, a trial run of the first sentences could
    # store sentiment labels as one tag per word.
    one_label_each = all(n == 1 for n in label_widths if n)
    some_long_sentence = any(n > 1 for n in sentence_widths)
    if one_label_each and some_long_sentence:
        return sentences, {}, {"label": [row[0] for row in label_rows]}

    # Token labels then; when the file mixes single-label lines with longer ones, say which
    # line made it token-level: the typo may be that line, not the first mismatch.
    why = ""
    if some_long_sentence and any(n == 1 for n in label_widths):
        multi = next(i for i, n in enumerate(label_widths, start=1) if n > 1)
        why = f" (read as token labels because line {multi} has {label_widths[multi - 1]} labels)"
    for lineno, (words, row) in enumerate(zip(sentences, label_rows), start=1):
        if len(row) != len(words):
            raise StrataError(
                f"{labels_path}:{lineno}: found {len(row)} labels but the sentence has {len(words)} tokens{why}"
            )
    return sentences, {"label": label_rows}, {}


def _read_senteval(path: str, max_sentences):
    """Read a SentEval probing TSV: ``split<TAB>label<TAB>sentence``."""
    sentences: list[list[str]] = []
    labels: list[str] = []
    splits: list[str] = []
    for lineno, line in _iter_lines(path, "input file"):
        if not line.strip():  # as in the other line-per-sentence formats
            raise StrataError(f"{path}:{lineno}: empty sentence")
        fields = line.split("\t")
        if len(fields) != 3:
            raise StrataError(
                f"{path}:{lineno}: expected 3 tab-separated fields (split, label, sentence), "
                f"found {len(fields)}"
            )
        split, label, sentence = fields
        if split not in _SENTEVAL_SPLITS:
            raise StrataError(f"{path}:{lineno}: unknown split {split!r}, expected one of tr, va, te")
        if not label:
            raise StrataError(f"{path}:{lineno}: empty label")
        if label != label.strip():  # 'I' and 'I ' would become two classes
            raise StrataError(f"{path}:{lineno}: label {label!r} has leading or trailing whitespace")
        words = sentence.split()
        if not words:
            raise StrataError(f"{path}:{lineno}: empty sentence")
        sentences.append(words)
        labels.append(label)
        splits.append(split)
        if len(sentences) == max_sentences:
            break
    return sentences, {}, {"label": labels, "split": splits}
