"""Tests for extractor.readers: each format's parse, and each error's exact message."""

import hashlib
import os
import re
from pathlib import Path

import pytest

from extractor.readers import FORMATS, Corpus, read_corpus
from store.errors import StrataError

UD_DEV = Path(__file__).resolve().parents[1].parent / "shared/data/ud_english_ewt/en_ewt-ud-dev.conllu"


def write(tmp_path, name, text):
    """Write ``text`` (str, or bytes as-is) to tmp_path/name and return the path as str."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def raises(message):
    """pytest.raises for a StrataError whose message is exactly ``message``."""
    return pytest.raises(StrataError, match="^" + re.escape(message) + "$")


def conllu_line(i, form, upos, xpos, deprel, head="0"):
    return "\t".join([str(i), form, form.lower(), upos, xpos, "_", head, deprel, "_", "_"]) + "\n"


# --- conllu -----------------------------------------------------------------

CONLLU = (
    "# sent_id = 1\n"
    "# text = I don't know.\n"
    + conllu_line(1, "I", "PRON", "PRP", "nsubj", "3")
    + "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    + conllu_line(2, "do", "AUX", "VBP", "aux", "3")
    + conllu_line(3, "n't", "PART", "RB", "advmod", "3")
    + conllu_line(4, "know", "VERB", "VB", "root")
    + "4.1\tknows\tknow\tVERB\tVBZ\t_\t_\t_\t4:conj\t_\n"
    + conllu_line(5, ".", "PUNCT", ".", "punct", "4")
    + "\n\n\n"  # consecutive blank lines are one separator
    + "# sent_id = 2\n"
    + conllu_line(1, "Hi", "INTJ", "UH", "_")  # '_' is an ordinary label
    # no trailing blank line: the last sentence still counts
)


def test_conllu_words_and_labels(tmp_path):
    path = write(tmp_path, "a.conllu", CONLLU)
    corpus = read_corpus(path, "conllu")
    assert isinstance(corpus, Corpus)
    assert corpus.sentences == [["I", "do", "n't", "know", "."], ["Hi"]]
    assert list(corpus.token_labels) == ["upos", "xpos", "deprel"]
    assert corpus.token_labels["upos"] == [["PRON", "AUX", "PART", "VERB", "PUNCT"], ["INTJ"]]
    assert corpus.token_labels["xpos"] == [["PRP", "VBP", "RB", "VB", "."], ["UH"]]
    assert corpus.token_labels["deprel"] == [["nsubj", "aux", "advmod", "root", "punct"], ["_"]]
    assert corpus.sentence_labels == {}
    assert corpus.path == path


def test_conllu_crlf_and_bom(tmp_path):
    text = "\ufeff" + conllu_line(1, "Hi", "INTJ", "UH", "root").replace("\n", "\r\n") + "\r\n"
    corpus = read_corpus(write(tmp_path, "a.conllu", text), "conllu")
    assert corpus.sentences == [["Hi"]]
    assert corpus.token_labels["deprel"] == [["root"]]


def test_conllu_wrong_column_count(tmp_path):
    text = "# c\n" + conllu_line(1, "a", "X", "X", "root") + "2\tb\tb\tX\tX\t_\t1\n"
    path = write(tmp_path, "a.conllu", text)
    with raises(f"{path}:3: expected 10 tab-separated columns, found 7"):
        read_corpus(path, "conllu")


def test_conllu_empty_column(tmp_path):
    path = write(tmp_path, "a.conllu", "1\t\ta\tX\tX\t_\t0\troot\t_\t_\n")
    with raises(f"{path}:1: empty FORM column"):
        read_corpus(path, "conllu")


def test_conllu_comment_only_block_is_empty_sentence(tmp_path):
    text = (
        conllu_line(1, "a", "X", "X", "root")
        + "\n# sent_id = 2\n# text =\n\n"  # block starting at line 3 has no token lines
        + conllu_line(1, "b", "X", "X", "root")
    )
    path = write(tmp_path, "a.conllu", text)
    with raises(f"{path}:3: empty sentence"):
        read_corpus(path, "conllu")


def test_conllu_max_sentences(tmp_path):
    path = write(tmp_path, "a.conllu", CONLLU)
    corpus = read_corpus(path, "conllu", max_sentences=1)
    assert corpus.sentences == [["I", "do", "n't", "know", "."]]
    assert corpus.token_labels["upos"] == [["PRON", "AUX", "PART", "VERB", "PUNCT"]]
    assert len(corpus.token_labels["deprel"]) == 1
    # The hash still covers the whole file, not just what was kept.
    assert corpus.sha256 == hashlib.sha256(CONLLU.encode()).hexdigest()


@pytest.mark.skipif(not UD_DEV.is_file(), reason="shared UD English EWT data not present")
def test_conllu_real_ud_english_ewt_dev():
    corpus = read_corpus(UD_DEV, "conllu")
    assert len(corpus.sentences) == 2001
    upos = {tag for sentence in corpus.token_labels["upos"] for tag in sentence}
    assert len(upos) == 17  # '_' of multiword ranges and empty nodes must not appear
    assert corpus.sentences[0] == ["From", "the", "AP", "comes", "this", "story", ":"]
    assert all(len(t) == len(w) for t, w in zip(corpus.token_labels["xpos"], corpus.sentences))
    assert corpus.sha256 == hashlib.sha256(UD_DEV.read_bytes()).hexdigest()
    assert corpus.path == str(UD_DEV)


# --- conll ------------------------------------------------------------------

CONLL = "-DOCSTART- -X- O\n\nThe DT B-NP\ncat\tNN   I-NP\n\n\n \nsat VBD B-VP\n"


def test_conll_columns_in_any_order(tmp_path):
    path = write(tmp_path, "a.txt", CONLL)
    corpus = read_corpus(path, "conll", columns=["word", "pos", "chunk"])
    assert corpus.sentences == [["The", "cat"], ["sat"]]  # -DOCSTART- block skipped
    assert list(corpus.token_labels) == ["pos", "chunk"]
    assert corpus.token_labels["pos"] == [["DT", "NN"], ["VBD"]]
    assert corpus.token_labels["chunk"] == [["B-NP", "I-NP"], ["B-VP"]]
    assert corpus.sentence_labels == {}

    swapped = read_corpus(path, "conll", columns="tag, word,chunk")  # comma string accepted too
    assert swapped.sentences == [["DT", "NN"], ["VBD"]]
    assert list(swapped.token_labels) == ["tag", "chunk"]
    assert swapped.token_labels["tag"] == [["The", "cat"], ["sat"]]


def test_conll_max_sentences(tmp_path):
    path = write(tmp_path, "a.txt", CONLL)
    corpus = read_corpus(path, "conll", columns=["word", "pos", "chunk"], max_sentences=1)
    assert corpus.sentences == [["The", "cat"]]
    assert corpus.token_labels == {"pos": [["DT", "NN"]], "chunk": [["B-NP", "I-NP"]]}


def test_conll_wrong_column_count(tmp_path):
    path = write(tmp_path, "a.txt", "The DT B-NP\ncat NN\n")
    with raises(f"{path}:2: expected 3 whitespace-separated columns (word pos chunk), found 2"):
        read_corpus(path, "conll", columns=["word", "pos", "chunk"])


@pytest.mark.parametrize(
    "columns, message",
    [
        (None, "--columns: required for the conll format (e.g. --columns word,pos,chunk)"),
        (["pos", "chunk"], "--columns: must name exactly one 'word' column, got 'pos,chunk'"),
        (["word", "pos", "word"], "--columns: must name exactly one 'word' column, got 'word,pos,word'"),
        (["word", "pos", "pos"], "--columns: duplicate column name 'pos'"),
        ("word,,pos", "--columns: empty column name in 'word,,pos'"),
    ],
)
def test_conll_bad_columns(tmp_path, columns, message):
    path = write(tmp_path, "a.txt", CONLL)
    with raises(message):
        read_corpus(path, "conll", columns=columns)


# --- neurox -----------------------------------------------------------------


def test_neurox_token_labels(tmp_path):
    path = write(tmp_path, "s.txt", "the cat sat\nhello\n")
    labels = write(tmp_path, "l.txt", "DT NN VBD\nUH\n")
    corpus = read_corpus(path, "neurox", labels_path=labels)
    assert corpus.sentences == [["the", "cat", "sat"], ["hello"]]
    assert corpus.token_labels == {"label": [["DT", "NN", "VBD"], ["UH"]]}
    assert corpus.sentence_labels == {}
    expected = hashlib.sha256(b"the cat sat\nhello\n" + b"DT NN VBD\nUH\n").hexdigest()
    assert corpus.sha256 == expected


def test_neurox_sentence_labels(tmp_path):
    path = write(tmp_path, "s.txt", "the cat sat\nhello\n")
    labels = write(tmp_path, "l.txt", "past\npresent\n")
    corpus = read_corpus(path, "neurox", labels_path=labels)
    assert corpus.token_labels == {}
    assert corpus.sentence_labels == {"label": ["past", "present"]}


def test_neurox_one_word_sentences_are_token_level(tmp_path):
    path = write(tmp_path, "s.txt", "hello\nbye\n")
    labels = write(tmp_path, "l.txt", "UH\nUH\n")
    corpus = read_corpus(path, "neurox", labels_path=labels)
    assert corpus.token_labels == {"label": [["UH"], ["UH"]]}
    assert corpus.sentence_labels == {}


def test_neurox_max_sentences(tmp_path):
    path = write(tmp_path, "s.txt", "a b\nc d\ne f\n")
    labels = write(tmp_path, "l.txt", "X Y\nZ W\nV U\n")
    corpus = read_corpus(path, "neurox", labels_path=labels, max_sentences=2)
    assert corpus.sentences == [["a", "b"], ["c", "d"]]
    assert corpus.token_labels == {"label": [["X", "Y"], ["Z", "W"]]}


def test_neurox_label_level_is_the_whole_files_whatever_max_sentences_keeps(tmp_path):
    """Sentiment labels of one-word first sentences: decided on the kept prefix, a trial run
    with --max-sentences 2 stored them as one tag per word."""
    path = write(tmp_path, "s.txt", "Great\nAwful\nThe film was fine\n")
    labels = write(tmp_path, "l.txt", "pos\nneg\npos\n")
    corpus = read_corpus(path, "neurox", labels_path=labels, max_sentences=2)
    assert corpus.token_labels == {} and corpus.sentence_labels == {"label": ["pos", "neg"]}
    # and token labels stay token labels when a line past the prefix has two
    path = write(tmp_path, "t.txt", "a\nb\nc d\n")
    labels = write(tmp_path, "m.txt", "X\nY\nZ W\n")
    corpus = read_corpus(path, "neurox", labels_path=labels, max_sentences=2)
    assert corpus.token_labels == {"label": [["X"], ["Y"]]} and corpus.sentence_labels == {}


def test_neurox_line_count_mismatch(tmp_path):
    path = write(tmp_path, "s.txt", "a b\nc d\ne f\n")
    labels = write(tmp_path, "l.txt", "X Y\nZ W\n")
    message = f"{labels}: 2 lines, but {path} has 3; expected one labels line per sentence line"
    with raises(message):
        read_corpus(path, "neurox", labels_path=labels)
    # Still detected when only a prefix is kept.
    with raises(message):
        read_corpus(path, "neurox", labels_path=labels, max_sentences=1)


def test_neurox_mixed_label_counts_name_the_line_that_made_them_token_labels(tmp_path):
    """Sentence labels with one typo line of two labels: the error says which line made the
    file token-level, since the first mismatch (line 1) is not the typo."""
    path = write(tmp_path, "s.txt", "a b\nc d\ne f\n")
    labels = write(tmp_path, "l.txt", "A\nB C\nA\n")
    with raises(f"{labels}:1: found 1 labels but the sentence has 2 tokens "
                "(read as token labels because line 2 has 2 labels)"):
        read_corpus(path, "neurox", labels_path=labels)


def test_neurox_token_count_mismatch(tmp_path):
    path = write(tmp_path, "s.txt", "a b\nc d e\n")
    labels = write(tmp_path, "l.txt", "X Y\nZ W\n")
    with raises(f"{labels}:2: found 2 labels but the sentence has 3 tokens"):
        read_corpus(path, "neurox", labels_path=labels)


def test_neurox_blank_lines(tmp_path):
    path = write(tmp_path, "s.txt", "a b\n  \nc d\n")
    labels = write(tmp_path, "l.txt", "X Y\nZ W\nV U\n")
    with raises(f"{path}:2: empty sentence"):
        read_corpus(path, "neurox", labels_path=labels)
    path = write(tmp_path, "s.txt", "a b\nc d\n")
    labels = write(tmp_path, "l.txt", "X Y\n\n")
    with raises(f"{labels}:2: empty line, expected labels"):
        read_corpus(path, "neurox", labels_path=labels)


def test_neurox_labels_required(tmp_path):
    path = write(tmp_path, "s.txt", "a b\n")
    with raises("--labels: required for the neurox format (the file of labels parallel to the input)"):
        read_corpus(path, "neurox")


def test_neurox_labels_file_missing(tmp_path):
    path = write(tmp_path, "s.txt", "a b\n")
    missing = str(tmp_path / "nope.txt")
    with raises(f"labels file not found: {missing}"):
        read_corpus(path, "neurox", labels_path=missing)


# --- senteval ---------------------------------------------------------------


def test_senteval(tmp_path):
    path = write(tmp_path, "p.txt", "tr\tPRES\tThe cat  sits .\nva\tPAST\tIt sat\nte\tPRES\tgo\n")
    corpus = read_corpus(path, "senteval")
    assert corpus.sentences == [["The", "cat", "sits", "."], ["It", "sat"], ["go"]]
    assert corpus.token_labels == {}
    assert list(corpus.sentence_labels) == ["label", "split"]
    assert corpus.sentence_labels["label"] == ["PRES", "PAST", "PRES"]
    assert corpus.sentence_labels["split"] == ["tr", "va", "te"]

    first_two = read_corpus(path, "senteval", max_sentences=2)
    assert first_two.sentences == [["The", "cat", "sits", "."], ["It", "sat"]]
    assert first_two.sentence_labels == {"label": ["PRES", "PAST"], "split": ["tr", "va"]}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("tr\tPRES the cat", "expected 3 tab-separated fields (split, label, sentence), found 2"),
        ("tr\tPRES\tthe\tcat", "expected 3 tab-separated fields (split, label, sentence), found 4"),
        ("", "empty sentence"),  # as text and neurox say of a blank line
        ("tr\t", "expected 3 tab-separated fields (split, label, sentence), found 2"),
        ("train\tPRES\tthe cat", "unknown split 'train', expected one of tr, va, te"),
        ("tr\t\tthe cat", "empty label"),
        ("tr\tPRES \tthe cat", "label 'PRES ' has leading or trailing whitespace"),
        ("tr\tPRES\t  ", "empty sentence"),
    ],
)
def test_senteval_malformed(tmp_path, bad_line, message):
    path = write(tmp_path, "p.txt", "tr\tPRES\tok\n" + bad_line + "\nte\tPAST\tok\n")
    with raises(f"{path}:2: {message}"):
        read_corpus(path, "senteval")


# --- text -------------------------------------------------------------------


def test_text(tmp_path):
    path = write(tmp_path, "t.txt", "Hello  world .\n\tcafé au lait\n")
    corpus = read_corpus(path, "text")
    assert corpus.sentences == [["Hello", "world", "."], ["café", "au", "lait"]]
    assert corpus.token_labels == {} and corpus.sentence_labels == {}
    assert corpus.sha256 == hashlib.sha256("Hello  world .\n\tcafé au lait\n".encode()).hexdigest()
    assert read_corpus(path, "text", max_sentences=1).sentences == [["Hello", "world", "."]]


def test_text_without_final_newline(tmp_path):
    assert read_corpus(write(tmp_path, "t.txt", "a b\nc"), "text").sentences == [["a", "b"], ["c"]]


@pytest.mark.parametrize("text, line", [("a\n\nb\n", 2), ("a\nb\n\n", 3), ("a\n   ", 2)])
def test_text_blank_line_is_error(tmp_path, text, line):
    path = write(tmp_path, "t.txt", text)
    with raises(f"{path}:{line}: empty sentence"):
        read_corpus(path, "text")


# --- errors common to all formats -------------------------------------------


@pytest.mark.parametrize("fmt", ["conllu", "senteval", "text"])
def test_missing_file(tmp_path, fmt):
    path = str(tmp_path / "missing.txt")
    with raises(f"input file not found: {path}"):
        read_corpus(path, fmt)


def test_directory(tmp_path):
    with raises(f"input file is a directory: {tmp_path}"):
        read_corpus(str(tmp_path), "text")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, "t.txt", "a\n")
    os.chmod(path, 0)
    with raises(f"input file not readable: {path} (Permission denied)"):
        read_corpus(path, "text")


@pytest.mark.parametrize(
    "fmt, text",
    [("conllu", ""), ("conllu", "\n\n"), ("conll", "\n"), ("text", ""), ("senteval", "")],
)
def test_empty_file(tmp_path, fmt, text):
    path = write(tmp_path, "e.txt", text)
    columns = ["word", "pos"] if fmt == "conll" else None
    with raises(f"{path}: empty file, no sentences found"):
        read_corpus(path, fmt, columns=columns)


def test_empty_neurox_files(tmp_path):
    path = write(tmp_path, "s.txt", "")
    labels = write(tmp_path, "l.txt", "")
    with raises(f"{path}: empty file, no sentences found"):
        read_corpus(path, "neurox", labels_path=labels)


def test_invalid_utf8(tmp_path):
    path = write(tmp_path, "t.txt", b"fine\nbad \xff byte\n")
    with raises(f"{path}:2: not valid UTF-8 (byte 0xff at column 5)"):
        read_corpus(path, "text")


def test_unknown_format(tmp_path):
    path = write(tmp_path, "t.txt", "a\n")
    with raises("--format: unknown format 'csv', expected one of conllu, conll, neurox, senteval, text"):
        read_corpus(path, "csv")
    assert FORMATS == ("conllu", "conll", "neurox", "senteval", "text")


@pytest.mark.parametrize("value", [0, -3, True, 2.0])
def test_bad_max_sentences(tmp_path, value):
    path = write(tmp_path, "t.txt", "a\n")
    with raises(f"--max-sentences: must be a positive integer, got {value!r}"):
        read_corpus(path, "text", max_sentences=value)


def test_parameters_for_other_formats_rejected(tmp_path):
    path = write(tmp_path, "t.txt", "a\n")
    with raises("--columns: only used by the conll format, not text"):
        read_corpus(path, "text", columns=["word"])
    with raises("--labels: only used by the neurox format, not conllu"):
        read_corpus(path, "conllu", labels_path=path)


def test_max_sentences_larger_than_corpus(tmp_path):
    path = write(tmp_path, "t.txt", "a\nb\n")
    assert read_corpus(path, "text", max_sentences=10).sentences == [["a"], ["b"]]


# --- malformed files that used to read as something else ----------------------


def test_conllu_word_ids_must_run_in_order(tmp_path):
    """A missing blank line merged two sentences into one, with two roots, silently."""
    merged = write(tmp_path, "merged.conllu", conllu_line(1, "The", "DET", "DT", "det", "2")
                   + conllu_line(2, "cat", "NOUN", "NN", "root") + "# sent_id = 2\n"
                   + conllu_line(1, "A", "DET", "DT", "det", "2"))
    with raises(f"{merged}:4: word ID '1', expected 3 (a missing blank line between two sentences?)"):
        read_corpus(merged, "conllu")
    skipped = write(tmp_path, "skip.conllu", conllu_line(1, "The", "DET", "DT", "det") + conllu_line(3, "x", "X", "X", "dep"))
    with raises(f"{skipped}:2: word ID '3', expected 2"):
        read_corpus(skipped, "conllu")


def mwt(ids, form):
    return f"{ids}\t{form}\t_\t_\t_\t_\t_\t_\t_\t_\n"


@pytest.mark.parametrize("lines, message", [
    # each was skipped as a range or an empty node and its word vanished without a word
    ([mwt("x-y", "foo")], "2: word ID 'x-y' is not a word ID, a multiword range (3-4) or an empty node (8.1)"),
    ([mwt("-1", "bar")], "2: word ID '-1' is not a word ID, a multiword range (3-4) or an empty node (8.1)"),
    ([mwt("2.", "baz")], "2: word ID '2.' is not a word ID, a multiword range (3-4) or an empty node (8.1)"),
    ([mwt("5-6", "zz")], "2: multiword range '5-6', expected 2-N with N > 2"),
    ([mwt("2-2", "zz")], "2: multiword range '2-2', expected 2-N with N > 2"),
    ([mwt("3.1", "zz")], "2: empty node '3.1', expected 1.N (after word 1)"),
])
def test_conllu_ids_that_are_not_words(tmp_path, lines, message):
    path = write(tmp_path, "t.conllu", conllu_line(1, "a", "X", "X", "dep") + "".join(lines)
                 + conllu_line(2, "b", "X", "X", "dep"))
    with raises(f"{path}:{message}"):
        read_corpus(path, "conllu")


def test_conllu_multiword_range_past_the_sentence(tmp_path):
    path = write(tmp_path, "t.conllu", conllu_line(1, "a", "X", "X", "dep") + mwt("2-3", "bc") + "\n"
                 + conllu_line(1, "c", "X", "X", "dep"))
    with raises(f"{path}:2: multiword range '2-3', but the sentence ends at word 1"):
        read_corpus(path, "conllu")


def test_conll_docstart_alone_and_stray_carriage_return(tmp_path):
    path = write(tmp_path, "d.conll", "-DOCSTART-\n\nEU NNP B-ORG\n")
    assert read_corpus(path, "conll", columns=["word", "pos", "ner"]).sentences == [["EU"]]
    crcr = write(tmp_path, "crcr.txt", b"a b\r\r\nc\n")  # one CR is the line ending, the other is not
    with raises(f"{crcr}:1: a carriage return inside the line (old Mac line endings?); lines must end in \\n or \\r\\n"):
        read_corpus(crcr, "text")


def test_conllu_labels_with_surrounding_whitespace(tmp_path):
    path = write(tmp_path, "t.conllu", conllu_line(1, "The", "DET", "DT", "det") + conllu_line(2, "cat", "NOUN ", "NN", "x"))
    with raises(f"{path}:2: UPOS 'NOUN ' has leading or trailing whitespace"):
        read_corpus(path, "conllu")


def test_lone_carriage_returns_and_a_byte_order_mark_inside_the_file(tmp_path):
    cr = write(tmp_path, "cr.txt", b"a b\rc d\n")  # str.split read it as one sentence of four words
    with raises(f"{cr}:1: a carriage return inside the line (old Mac line endings?); lines must end in \\n or \\r\\n"):
        read_corpus(cr, "text")
    joined = write(tmp_path, "joined.txt", "\ufeffa b\n\ufeffc d\n".encode())  # cat of two files with a BOM
    with raises(f"{joined}:2: a byte-order mark starts this line (two files joined with cat?)"):
        read_corpus(joined, "text")
    assert read_corpus(write(tmp_path, "crlf.txt", b"\xef\xbb\xbfa b\r\nc\r\n"), "text").sentences == [["a", "b"], ["c"]]


def test_a_pipe_is_refused(tmp_path):
    """Read twice (parse, then hash), a pipe's second read is empty: the recorded dataset
    sha256 was that of no bytes."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with raises(f"input file is not a regular file (a pipe?): {fifo}; strata reads it twice, to parse and to "
                "hash it: write it to a file first"):
        read_corpus(fifo, "text")


def test_lines_after_max_sentences_are_counted_not_decoded(tmp_path):
    path = write(tmp_path, "t.txt", b"ok\nok\n\xff\n")
    assert read_corpus(path, "text", max_sentences=2).sentences == [["ok"], ["ok"]]
    with raises(f"{path}:3: not valid UTF-8 (byte 0xff at column 1)"):
        read_corpus(path, "text")
