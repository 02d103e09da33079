"""Shared fixtures: tiny offline models, the UD data in ../shared, a CLI runner."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests import tiny_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UD = REPO.parent / "shared" / "data" / "ud_english_ewt"


def _signal_state():
    return (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
            signal.pthread_sigmask(signal.SIG_BLOCK, []))  # an empty SIG_BLOCK only reads the mask


@pytest.fixture(autouse=True)
def signals_are_left_as_found(request):
    """A test that leaves a SIGINT/SIGTERM handler or a blocked signal behind fails itself, by
    name, rather than the interrupt tests that run after it in the same worker."""
    before = _signal_state()
    yield
    after = _signal_state()
    assert after == before, f"{request.node.nodeid} left the signal state changed: {before} -> {after}"


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt for the test, as at a terminal, restored after.  A
    shell starts a background job (``make test &``) with SIGINT ignored, and Python then
    keeps it ignored: the interrupt tests of test_streams.py failed "DID NOT RAISE" in such a
    run (the product is right to keep a signal its caller ignores)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def ud_dev() -> Path:
    path = UD / "en_ewt-ud-dev.conllu"
    assert path.exists(), f"UD English EWT not found at {path} (tests read it from ../shared)"
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_roberta(tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="session")
def tiny_models_by_name(tiny_bert, tiny_gpt2, tiny_roberta) -> dict[str, Path]:
    return {"bert": tiny_bert, "gpt2": tiny_gpt2, "roberta": tiny_roberta}


UD_FILES = {"train": "en_ewt-ud-train.conllu", "dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}


@pytest.fixture(scope="session")
def stores(tmp_path_factory, tiny_bert, ud_dev):
    """Tiny-BERT stores (3 hidden states x 32) of the first UD sentences of each split.

    Shared by every module that probes them (once per run, not once per module):
    tests only read them, and copy a store before changing it.
    """
    from strata import main

    root = tmp_path_factory.mktemp("probe_stores")
    paths = {}
    for split, n in (("train", 400), ("dev", 150), ("test", 150)):
        paths[split] = root / f"{split}.zarr"
        assert main(["extract", "--model", str(tiny_bert), "--input", str(ud_dev.parent / UD_FILES[split]),
                     "--format", "conllu", "--out", str(paths[split]), "--max-sentences", str(n)]) == 0
    return paths


@pytest.fixture
def strata(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from strata import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


SENTENCES = [
    "The delicious breakfast was surprisingly unforgettable yesterday .",
    "A cat sat on the mat .",
    "Researchers extracted activations from every layer of the transformer .",
    "Probing classifiers reveal where linguistic knowledge lives .",
    "Short one .",
    "Unbelievably , the committee postponed its extraordinary deliberations again .",
    "We tokenized everything offline .",
    "Fine-tuning moves representations in the upper layers .",
]


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES * 3) + "\n")
    return path
