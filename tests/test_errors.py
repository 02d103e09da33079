"""Every bad input gets a one-line error, a non-zero exit, and no store claiming completeness."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModel

import zarr.storage._local as zarr_local

from tests.test_resume import REPO, run_subprocess


def extract(strata, model, corpus, out, fmt="text", *extra):
    return strata("extract", "--model", model, "--input", corpus, "--format", fmt, "--out", out, *extra)


def one_line_error(err: str) -> str:
    """The single error line (a progress bar may precede it on stderr)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0]), err
    return lines[0][lines[0].index("strata "):]


def test_missing_input(strata, tiny_bert, tmp_path):
    code, _, err = extract(strata, tiny_bert, tmp_path / "nope.txt", tmp_path / "s.zarr")
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: input file not found: {tmp_path / 'nope.txt'}"
    assert not (tmp_path / "s.zarr").exists()


def test_malformed_conllu_names_the_line(strata, tiny_bert, tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("# sent_id = 1\n1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tcat\tcat\tNOUN\n\n")
    code, _, err = extract(strata, tiny_bert, bad, tmp_path / "s.zarr", "conllu")
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: {bad}:3: expected 10 tab-separated columns, found 4"


def test_malformed_conll_names_the_line(strata, tiny_bert, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("The DT B-NP\ncat NN\n")
    code, _, err = extract(strata, tiny_bert, bad, tmp_path / "s.zarr", "conll", "--columns", "word,pos,chunk")
    assert code == 1
    assert one_line_error(err) == ("strata extract: error: "
                                   f"{bad}:2: expected 3 whitespace-separated columns (word pos chunk), found 2")


def test_neurox_token_label_mismatch(strata, tiny_bert, tmp_path):
    words, labels = tmp_path / "w.txt", tmp_path / "l.txt"
    words.write_text("a cat sat\nthe dog\n")
    labels.write_text("DT NN VB\nDT\n")
    code, _, err = extract(strata, tiny_bert, words, tmp_path / "s.zarr", "neurox", "--labels", labels)
    assert code == 1
    assert one_line_error(err) == (f"strata extract: error: {labels}:2: found 1 labels but the sentence has 2 tokens"
                                   " (read as token labels because line 1 has 3 labels)")


def test_empty_file(strata, tiny_bert, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = extract(strata, tiny_bert, empty, tmp_path / "s.zarr")
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: {empty}: empty file, no sentences found"


def test_empty_sentence(strata, tiny_bert, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a cat sat\n\nthe dog ran\n")
    code, _, err = extract(strata, tiny_bert, corpus, tmp_path / "s.zarr")
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: {corpus}:2: empty sentence"


def test_unknown_format(strata, tiny_bert, text_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        extract(strata, tiny_bert, text_corpus, tmp_path / "s.zarr", "csv")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("strata extract: error: argument --format: invalid choice: 'csv' "
                                       "(choose from 'conllu', 'conll', 'neurox', 'senteval', 'text')\n")
    with pytest.raises(SystemExit) as exit_info:  # --help still prints the usage
        strata("extract", "--help")
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: strata extract ")
    with pytest.raises(SystemExit) as exit_info:  # named by its subcommand, not as "strata: error"
        strata("inspect", tmp_path, "--bogus", "1")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "strata inspect: error: unrecognized arguments: --bogus 1\n"


def test_model_path_missing(strata, text_corpus, tmp_path):
    code, _, err = extract(strata, tmp_path / "no-model", text_corpus, tmp_path / "s.zarr")
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: --model: no such directory: {tmp_path / 'no-model'}"


def test_model_that_does_not_load(strata, text_corpus, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = extract(strata, broken, text_corpus, tmp_path / "s.zarr")
    assert code == 1
    assert one_line_error(err).startswith(f"strata extract: error: --model: cannot load '{broken}': ")


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_gpt2"])
def test_model_without_tokenizer_files(strata, text_corpus, tmp_path, model, request):
    """transformers then builds a tokenizer of special tokens only: every word [UNK] (BERT) or nothing (GPT-2)."""
    source = request.getfixturevalue(model)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((source / name).read_bytes())
    code, _, err = extract(strata, bare, text_corpus, tmp_path / "s.zarr")
    assert code == 1
    assert one_line_error(err) == (f"strata extract: error: --model: '{bare}' has no tokenizer: its vocabulary "
                                   "holds only special tokens (tokenizer.json or the vocabulary files are missing)")
    assert not (tmp_path / "s.zarr").exists()


def test_weights_that_do_not_load_leave_no_store(strata, tiny_bert, text_corpus, tmp_path):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (no_weights / name).write_bytes((tiny_bert / name).read_bytes())
    out = tmp_path / "s.zarr"
    code, _, err = extract(strata, no_weights, text_corpus, out)
    assert code == 1
    assert one_line_error(err).startswith(f"strata extract: error: --model: cannot load '{no_weights}': ")
    assert not out.exists()
    assert extract(strata, tiny_bert, text_corpus, out)[0] == 0  # the corrected --model is not refused


def _unreachable_hub(tmp_path) -> dict:
    """A subprocess environment whose Hugging Face endpoint refuses connections at once and
    whose cache is empty (online mode: huggingface_hub would retry each request 5 times)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**env, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf"),
            "NO_PROXY": "*", "no_proxy": "*"}


def _run_with_env(args, env):
    return subprocess.run([sys.executable, "-m", "strata", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_hub_id_with_the_hub_unreachable_fails_at_once_in_one_line(tmp_path, text_corpus):
    env = _unreachable_hub(tmp_path)
    result = _run_with_env(["extract", "--model", "strata-tests/not-cached", "--input", text_corpus, "--format",
                            "text", "--out", tmp_path / "s.zarr"], env)
    assert result.returncode == 1
    assert "Retrying" not in result.stderr  # no back-off: the cache alone was read
    assert one_line_error(result.stderr).startswith(
        "strata extract: error: --model: cannot load 'strata-tests/not-cached' (127.0.0.1 cannot be reached, so only "
        "the local Hugging Face cache was read): ")
    assert not (tmp_path / "s.zarr").exists()


def test_cached_hub_id_loads_with_the_hub_unreachable(tmp_path, tiny_bert, text_corpus, strata):
    """A model in the Hugging Face cache (the layout hf_hub_download writes) extracts as its directory does."""
    env = _unreachable_hub(tmp_path)
    repo = tmp_path / "hf" / "hub" / "models--strata-tests--tiny-bert"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_bert, repo / "snapshots" / commit)
    result = _run_with_env(["extract", "--model", "strata-tests/tiny-bert", "--input", text_corpus, "--format",
                            "text", "--out", tmp_path / "hub.zarr"], env)
    assert result.returncode == 0, result.stderr
    assert "Retrying" not in result.stderr
    assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                  "--out", tmp_path / "dir.zarr")[0] == 0
    hub, local = zarr.open_group(tmp_path / "hub.zarr", mode="r"), zarr.open_group(tmp_path / "dir.zarr", mode="r")
    np.testing.assert_array_equal(hub["activations"][...], local["activations"][...])


@pytest.mark.parametrize("flag, value", [("--shard-tokens", "-64"), ("--shard-tokens", "0"),
                                         ("--threads", "-1"), ("--threads", "0")])
def test_sizes_must_be_positive(strata, tiny_bert, text_corpus, tmp_path, flag, value):
    code, _, err = extract(strata, tiny_bert, text_corpus, tmp_path / "s.zarr", "text", flag, value)
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: {flag}: must be a positive integer, got {value}"
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("columns, bad", [("word,pos/x,chunk", "pos/x"), ("word,..,chunk", ".."),
                                          ("word,pos,../../x", "../../x"), ("word,pos,ch unk", "ch unk")])
def test_conll_column_names_must_be_safe(strata, tiny_bert, tmp_path, columns, bad):
    corpus = tmp_path / "c.conll"
    corpus.write_text("The DT B-NP\ncat NN I-NP\n")
    code, _, err = extract(strata, tiny_bert, corpus, tmp_path / "s.zarr", "conll", "--columns", columns)
    assert code == 1
    assert one_line_error(err) == (f"strata extract: error: --columns: '{bad}' is not a valid column name "
                                   "(use letters, digits, '_' and '-')")
    assert not (tmp_path / "s.zarr").exists()


def test_conll_column_names_are_trimmed(strata, tiny_bert, tmp_path):
    corpus = tmp_path / "c.conll"
    corpus.write_text("The DT B-NP\ncat NN I-NP\n")
    out = tmp_path / "s.zarr"
    assert extract(strata, tiny_bert, corpus, out, "conll", "--columns", " word, pos ,chunk")[0] == 0
    group = zarr.open_group(out, mode="r")
    assert sorted(name for name in group.array_keys() if name.startswith("label_")) == ["label_chunk", "label_pos"]
    assert group.attrs["strata"]["parameters"]["columns"] == ["word", "pos", "chunk"]


def test_duplicate_layers(strata, tiny_bert, text_corpus, tmp_path):
    code, _, err = extract(strata, tiny_bert, text_corpus, tmp_path / "s.zarr", "text", "--layers", "1,1,0")
    assert code == 1
    assert one_line_error(err) == "strata extract: error: --layers: layer 1 is given more than once in '1,1,0'"
    assert not (tmp_path / "s.zarr").exists()


def test_cuda_device_index_is_checked(strata, tiny_bert, text_corpus, tmp_path, monkeypatch):
    """Checked before the store is created; a machine with one GPU is simulated."""
    from accelerate import PartialState

    PartialState(cpu=True)  # the process state exists before CUDA "appears"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device, message in (("cuda:1", "--device: cuda:1 is out of range: this machine has 1 CUDA device "
                                        "(cuda:0..cuda:0)"),
                            ("cuda:x", "--device: choose cpu, cuda or cuda:N, got 'cuda:x'")):
        code, _, err = extract(strata, tiny_bert, text_corpus, tmp_path / "s.zarr", "text", "--device", device)
        assert code == 1
        assert one_line_error(err) == f"strata extract: error: {message}"
        assert not (tmp_path / "s.zarr").exists()


def test_layer_out_of_range(strata, tiny_bert, text_corpus, tmp_path):
    code, _, err = extract(strata, tiny_bert, text_corpus, tmp_path / "s.zarr", "text", "--layers", "0,3")
    assert code == 1
    assert one_line_error(err) == ("strata extract: error: --layers: layer 3 is out of range for "
                                   f"{tiny_bert} (0..2, 0 = embedding output)")


def test_output_that_is_not_a_store(strata, tiny_bert, text_corpus, tmp_path):
    somebody = tmp_path / "theirs"
    somebody.mkdir()
    (somebody / "notes.txt").write_text("precious")
    code, _, err = extract(strata, tiny_bert, text_corpus, somebody)
    assert code == 1
    assert one_line_error(err) == (f"strata extract: error: --out: {somebody} exists and is not a strata store; "
                                   "choose a new path")
    assert (somebody / "notes.txt").read_text() == "precious"
    a_file = tmp_path / "file.zarr"
    a_file.write_text("x")
    code, _, err = extract(strata, tiny_bert, text_corpus, a_file)
    assert one_line_error(err) == f"strata extract: error: --out: {a_file} exists and is not a strata store (it is a file)"


def test_disk_error_while_writing(strata, tiny_bert, text_corpus, tmp_path, monkeypatch):
    out = tmp_path / "s.zarr"
    real_put = zarr_local._put

    def full_disk(path, value, exclusive=False):
        if "activations/c" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(zarr_local, "_put", full_disk)
    code, _, err = extract(strata, tiny_bert, text_corpus, out)
    assert code == 1
    assert one_line_error(err) == f"strata extract: error: disk error writing {out}: No space left on device"
    assert not zarr.open_group(out, mode="r").attrs["strata"]["complete"]
    monkeypatch.setattr(zarr_local, "_put", real_put)
    assert strata("verify", out)[0] == 1
    assert extract(strata, tiny_bert, text_corpus, out)[0] == 0  # the space is back: resume completes
    assert strata("verify", out)[0] == 0


def test_float16_overflow_is_reported_not_stored(strata, tiny_bert, text_corpus, tmp_path):
    loud = tmp_path / "loud"
    model = AutoModel.from_pretrained(tiny_bert)
    with torch.no_grad():
        model.embeddings.LayerNorm.weight.fill_(1e6)  # embedding output far beyond 65504
    model.save_pretrained(loud)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (loud / name).write_bytes((tiny_bert / name).read_bytes())
    out = tmp_path / "s.zarr"
    code, _, err = extract(strata, loud, text_corpus, out)
    assert code == 1
    line = one_line_error(err)
    assert line.startswith("strata extract: error: activations exceed the float16 range (|x| = ")
    found = re.search(rf"> 65504\) at layer 0, sentence (\d+) of {re.escape(str(text_corpus))}; "
                      rf"rerun with --dtype float32 and a new --out \(or delete {re.escape(str(out))}, "
                      r"created for float16\)$", line)
    assert found and 1 <= int(found[1]) <= len(text_corpus.read_text().splitlines())  # counted from 1
    assert strata("verify", out)[0] == 1
    assert extract(strata, loud, text_corpus, out, "text", "--dtype", "float32")[0] == 1  # why a new --out
    assert extract(strata, loud, text_corpus, tmp_path / "f32.zarr", "text", "--dtype", "float32")[0] == 0


def test_errors_exit_nonzero_as_a_process(tiny_bert, tmp_path):
    result = run_subprocess(["extract", "--model", str(tiny_bert), "--input", str(tmp_path / "x"), "--format",
                             "text", "--out", str(tmp_path / "s.zarr")])
    assert result.returncode == 1
    assert result.stderr.strip() == f"strata extract: error: input file not found: {tmp_path / 'x'}"


def test_a_tokenizer_with_ids_past_the_embeddings_is_refused_before_the_store(strata, tiny_bert, text_corpus,
                                                                                tmp_path):
    """A tokenizer from another model would fail inside the first forward pass, after the
    store exists; refused with the model loaded, before anything is written."""
    from transformers import BertConfig, BertModel

    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_bert, mixed)
    config = BertConfig.from_pretrained(mixed)
    config.vocab_size = 40  # the tokenizer has hundreds of ids
    BertModel(config).save_pretrained(mixed)
    out = tmp_path / "s.zarr"
    code, _, err = extract(strata, mixed, text_corpus, out)
    assert code == 1
    assert re.fullmatch(rf"strata extract: error: --model: the tokenizer of {re.escape(str(mixed))} gives token id "
                        r"(\d+), but the model has 40 embeddings: tokenizer and weights do not belong together",
                        one_line_error(err))
    assert not out.exists()


def test_a_bad_codec_is_refused_before_the_store(strata, tiny_bert, text_corpus, tmp_path):
    out = tmp_path / "s.zarr"
    code, _, err = extract(strata, tiny_bert, text_corpus, out, "text", "--codec", "zstd")
    assert code == 1
    assert one_line_error(err) == "strata extract: error: --codec: unknown codec 'zstd'; use 'lossless' or 'bitround:K'"
    assert not out.exists()


def test_pool_none_with_another_kind(strata, tiny_bert, text_corpus, tmp_path):
    code, _, err = strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                          "--out", tmp_path / "x.zarr", "--pool", "none,cls")
    assert (code, err.strip()) == (1, "strata extract: error: --pool: 'none' stores no sentence vectors and takes "
                                      "no other kind, got 'none,cls'")
    assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                  "--out", tmp_path / "y.zarr", "--pool", "none ")[0] == 0
    assert not any(p.name.startswith("pooled_") for p in (tmp_path / "y.zarr").iterdir())


@pytest.mark.parametrize("pool, message", [
    ("", "--pool: expected cls, mean, cls,mean or none, got ''"),
    ("cls,", "--pool: expected cls, mean, cls,mean or none, got 'cls,'"),
    ("cls,mean,cls", "--pool: cls is given more than once in 'cls,mean,cls'"),
])
def test_pool_empty_or_repeated(strata, tiny_bert, text_corpus, tmp_path, pool, message):
    """An empty --pool stored no sentence vectors, as 'none' does, and a repeated kind was
    dropped, where --layers refuses both."""
    code, _, err = strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                          "--out", tmp_path / "x.zarr", "--pool", pool)
    assert (code, err.strip()) == (1, f"strata extract: error: {message}")
    assert not (tmp_path / "x.zarr").exists()


def test_too_many_classes_names_the_label_set_and_file(strata, tiny_bert, tmp_path):
    """Words read as labels (--columns out of order) make a label set of every word."""
    path = tmp_path / "many.conll"
    path.write_text("".join(f"w pos{i}\n\n" for i in range(33000)))  # one-word sentences
    code, _, err = strata("extract", "--model", tiny_bert, "--input", path, "--format", "conll",
                          "--columns", "word,pos", "--out", tmp_path / "x.zarr")
    assert (code, err.strip()) == (1, f"strata extract: error: {path}: label set 'pos' has 33,000 classes; at most "
                                      "32,767 are supported (is it a label column?)")
    assert not (tmp_path / "x.zarr").exists()


def test_words_read_as_the_unknown_token_are_counted_where_users_look(strata, tiny_bert, tmp_path):
    path = tmp_path / "zw.txt"
    path.write_text("a \u200b b\nthe cat\n")  # a zero-width space: no subword of its own
    code, out, _ = strata("extract", "--model", tiny_bert, "--input", path, "--format", "text",
                          "--out", tmp_path / "x.zarr")
    assert code == 0
    assert "1 word with no subword read as the unknown token" in out.splitlines()[0]
    assert "tokens      5 (last vectors; 1 word with no subword read as the unknown token)" in out

