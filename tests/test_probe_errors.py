"""Every bad input to ``strata probe`` stops with one exact line and exit status 1."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from tests.test_probe_command import GRID


@pytest.fixture
def run(stores, strata, tmp_path):
    def go(*extra, train=None, dev=None):
        args = ["probe", "--train", train or stores["train"], "--dev", dev or stores["dev"], "--labels", "upos",
                "--layers", "2", *GRID, "--quiet", "--out", tmp_path / "out", *extra]
        code, out, err = strata(*args)
        return code, err.strip()
    return go


def copy_store(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_root_attrs(path, **changes):
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs["strata"])
    attrs.update(changes)
    group.attrs["strata"] = attrs


def test_incomplete_store(run, stores, tmp_path):
    broken = copy_store(stores["train"], tmp_path / "half.zarr")
    edit_root_attrs(broken, complete=False)
    assert run(train=broken) == (1, f"strata probe: error: --train: {broken} is an incomplete store; "
                                    "finish it by rerunning the same strata extract command")
    assert not (tmp_path / "out" / "results.json").exists()


def test_missing_label_set(run, stores):
    assert run("--labels", "ner") == (1, f"strata probe: error: --labels: {stores['train'].resolve()} has no "
                                         "token-level label set 'ner' (it has: deprel, upos, xpos)")


def test_store_of_another_model(run, stores, strata, tiny_gpt2, tmp_path, ud_dev):
    other = tmp_path / "gpt2.zarr"
    assert strata(*["extract", "--model", str(tiny_gpt2), "--input", str(ud_dev), "--format", "conllu",
                 "--out", str(other), "--max-sentences", "20"])[0] == 0
    code, err = run(dev=other)
    assert code == 1
    assert err == (f"strata probe: error: --dev: {other.resolve()} differs from the train store "
                   f"{stores['train'].resolve()} in model ('{tiny_gpt2}' vs '{zarr.open_group(stores['train']).attrs['strata']['parameters']['model']}'); "
                   "probes need stores of the same model and layers")


def test_store_with_other_layers(run, stores, strata, tiny_bert, tmp_path, ud_dev):
    other = tmp_path / "layers.zarr"
    assert strata(*["extract", "--model", str(tiny_bert), "--input", str(ud_dev), "--format", "conllu",
                 "--out", str(other), "--max-sentences", "20", "--layers", "0,2"])[0] == 0
    code, err = run(dev=other)
    assert code == 1 and err.endswith("in layers ([0, 2] vs [0, 1, 2]); probes need stores of the same model and layers")


@pytest.mark.parametrize("option,value,message", [
    ("--l1", "", "--l1: the grid is empty"),
    ("--l2", "0,-1", "--l2: penalties must be >= 0 and at most 1e+18 (larger ones overflow the float32 solver), got -1.0"),
    # argparse of Python 3.11 took '-1e-3' for an option, not a value (strata.OneLineErrors)
    ("--l1", "-1e-3", "--l1: penalties must be >= 0 and at most 1e+18 (larger ones overflow the float32 solver), got -0.001"),
    ("--l1", "1e20", "--l1: penalties must be >= 0 and at most 1e+18 (larger ones overflow the float32 solver), got 1e+20"),
    ("--l1", "1e-3,abc", "--l1: '1e-3,abc' is not a comma-separated list of numbers"),
    ("--layers", "7", "--layers: layer 7 is not in the store (stored: 0, 1, 2)"),
    ("--layers", "top", "--layers: 'top' is not each, all, a layer id or ids joined by +"),
    ("--max-memory", "lots", "--max-memory: 'lots' is not a size such as 4GB or 512MiB"),
    ("--max-memory", "", "--max-memory: '' is not a size such as 4GB or 512MiB"),
    ("--max-memory", "kB", "--max-memory: 'kB' is not a size such as 4GB or 512MiB"),
    ("--max-memory", "1e400", "--max-memory: '1e400' is not a size such as 4GB or 512MiB"),
    ("--seed", "-1", "--seed: must be >= 0, got -1"),
    ("--layers", "0+0", "--layers: '0+0' names a layer twice"),
    ("--layers", "2+0,0+2", "--layers: '0+2' is '2+0' in another order (the same features); give one of them"),
    ("--layers", "1,0,1", "--layers: '1' is given more than once in '1,0,1'"),
    ("--l1", "1e-3,0.001", "--l1: 0.001 is given more than once in '1e-3,0.001'"),
    ("--l2", "0,1e-4,0", "--l2: 0 is given more than once in '0,1e-4,0'"),
    ("--tol", "0", "--tol: must be > 0 and finite, got 0.0"),
    ("--tol", "nan", "--tol: must be > 0 and finite, got nan"),
    ("--tol", "inf", "--tol: must be > 0 and finite, got inf"),
    ("--gap-tol", "0", "--gap-tol: must be > 0 and finite, got 0.0"),
    ("--gap-tol", "inf", "--gap-tol: must be > 0 and finite, got inf"),
    ("--screen-tol", "0", "--screen-tol: must be > 0 and finite, or off, got 0"),
    ("--screen-tol", "inf", "--screen-tol: must be > 0 and finite, or off, got inf"),
    ("--screen-tol", "loose", "--screen-tol: 'loose' is not a number or off"),
    ("--screen-margin", "-0.1", "--screen-margin: must be a fraction in [0, 1], got -0.1"),
    ("--screen-margin", "inf", "--screen-margin: must be a fraction in [0, 1], got inf"),
    ("--device", "tpu", "--device: 'tpu' is not cpu or cuda"),
    ("--device", "cuda:abc", "--device: 'cuda:abc' is not cuda or cuda:N"),
    ("--device", "cuda:", "--device: 'cuda:' is not cuda or cuda:N"),
])
def test_bad_options(run, option, value, message):
    assert run(option, value) == (1, f"strata probe: error: {message}")


def test_negative_max_memory(run):
    assert run("--max-memory=-1GB") == (1, "strata probe: error: --max-memory: must be >= 0, got -1GB")


def test_non_finite_activations(run, stores, tmp_path):
    broken = copy_store(stores["train"], tmp_path / "nan.zarr")
    acts = zarr.open_group(broken, mode="r+")["activations"]
    acts[2, 5, 3] = np.nan  # layer position 2 = hidden state 2
    # The store's own checksums catch the edit first; past them (--no-verify) the read does.
    assert run(train=broken) == (1, f"strata probe: error: --train: {broken.resolve()}: checksum mismatch in "
                                    "activations/c/0/0/0 (strata verify checks it; --no-verify skips the check)")
    assert run("--no-verify", train=broken) == (1, f"strata probe: error: --train: {broken.resolve()} has "
                                                   "non-finite activations (layer 2, neuron 3)")


def test_a_damaged_shard_is_refused_in_one_line(run, stores, tmp_path):
    """A flipped bit decodes as a valid value (Blosc keeps no checksum): only the store's
    recorded sha256 tells, and probe checks it before training.  Past the check, a shard
    that does not decode is one line too, not a traceback (nor asyncio's noise at exit)."""
    flipped = copy_store(stores["train"], tmp_path / "flipped.zarr")
    shard = flipped / "activations" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    assert run(train=flipped) == (1, f"strata probe: error: --train: {flipped.resolve()}: checksum mismatch in "
                                     "activations/c/0/0/0 (strata verify checks it; --no-verify skips the check)")
    assert not (tmp_path / "out").exists()
    shard.write_bytes(bytes(data[:1000]))
    code, err = run("--no-verify", train=flipped)
    assert code == 1 and "\n" not in err
    assert err.startswith(f"strata probe: error: --train: {flipped.resolve()}: damaged store, cannot read it (")
    assert err.endswith("); run strata verify")


def test_label_unseen_in_training_counts_as_an_error(run, stores, tmp_path):
    dev = copy_store(stores["dev"], tmp_path / "dev.zarr")
    labels = zarr.open_group(dev, mode="r+")["label_upos"]
    classes = list(labels.attrs["classes"])
    renamed = classes.index("NOUN")
    classes[renamed] = "NEWTAG"
    labels.attrs["classes"] = classes
    code, err = run("--no-verify", dev=dev)  # an edited store: its metadata checksum no longer matches
    assert code == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    unseen = int((labels[...] == renamed).sum())
    assert doc["chosen"][0]["unseen_label_tokens"] == {"dev": unseen}
    assert doc["chosen"][0]["rows"]["dev"] == int((labels[...] >= 0).sum())  # unseen tokens stay rows
    # listed among the per-class metrics, never predicted: the supports add up to the rows scored
    per_class = doc["chosen"][0]["per_class"]["dev"]
    assert per_class["NEWTAG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": unseen, "in_training": False}
    assert sum(c["support"] for c in per_class.values()) == doc["chosen"][0]["rows"]["dev"]
    assert all(c["in_training"] for name, c in per_class.items() if name != "NEWTAG")
    rows = doc["chosen"][0]["rows"]["dev"]
    assert doc["chosen"][0]["dev_accuracy"] <= (rows - unseen) / rows  # an unseen token is never right


def test_one_model_under_another_spelling_is_the_same_model(run, stores, tmp_path):
    """A dev store that names the train store's model through a symlink, with the config hash
    stores recorded before the hash left the path out, is the same model; a config that
    differs is not."""
    from extractor import model as hf

    params = zarr.open_group(stores["train"], mode="r").attrs["strata"]["parameters"]
    link = tmp_path / "model_link"
    link.symlink_to(params["model"])
    dev = copy_store(stores["dev"], tmp_path / "dev.zarr")
    legacy = hf.legacy_config_sha256(hf.load_config(params["model"]), str(link))
    edit_root_attrs(dev, parameters={**params, "model": str(link), "config_sha256": legacy})
    assert run("--no-verify", dev=dev)[0] == 0  # edited root attributes: their checksum no longer matches
    edit_root_attrs(dev, parameters={**params, "model": str(link), "config_sha256": "0" * 64})
    code, err = run("--no-verify", dev=dev)
    assert code == 1 and "in config_sha256 ('" + "0" * 64 in err
    # a variant's store differs in its config hash too; the message names the variant
    edit_root_attrs(dev, parameters={**params, "variant": "random-init", "variant_seed": 0, "config_sha256": "0" * 64})
    code, err = run("--no-verify", dev=dev)
    assert code == 1 and "differs from the train store" in err and "in variant ('random-init' vs None)" in err


def test_the_train_store_as_dev_is_allowed_with_a_warning(run, stores):
    code, err = run(dev=stores["train"])
    assert code == 0
    assert err == (f"strata probe: warning: --dev is the --train store {stores['train'].resolve()} and it has no "
                   "'split' label set to separate them: dev scores are scores on the training rows")


def test_an_unreachable_scheduler_is_one_line_and_leaves_no_out(run, tmp_path):
    """(A refused tcp:// address is retried for the 20 s connect timeout; an address of an
    unknown scheme fails at once, through the same path.)"""
    out = tmp_path / "out"  # the fixture's --out
    code, err = run("--scheduler", "nowhere://scheduler:8786")
    assert code == 1 and err.startswith("strata probe: error: --scheduler: cannot reach a dask scheduler at "
                                        "nowhere://scheduler:8786 (")
    assert not out.exists()
