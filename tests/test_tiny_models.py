"""Tests for tests/tiny_models.py: tiny offline BERT / GPT-2 / RoBERTa fixtures."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import huggingface_hub.constants  # noqa: E402

from tests.tiny_models import (  # noqa: E402
    HIDDEN_SIZE,
    NUM_LAYERS,
    build_tiny_bert,
    build_tiny_gpt2,
    build_tiny_roberta,
)

BUILDERS = {"bert": build_tiny_bert, "gpt2": build_tiny_gpt2, "roberta": build_tiny_roberta}
KINDS = sorted(BUILDERS)
EXPECTED_CLASSES = {
    "bert": ("BertModel", "BertTokenizer"),
    "gpt2": ("GPT2Model", "GPT2Tokenizer"),
    "roberta": ("RobertaModel", "RobertaTokenizer"),
}
# Not in the training corpus; several words are split into >= 2 subwords.
SENTENCE = "The delicious breakfast was surprisingly unforgettable yesterday .".split()
OTHER = "My sister bought a new bicycle for her birthday , right ?".split()
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Force Hub offline mode (env var and the already-imported constant)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """kind -> directory of a default build (max_positions=64, seed=0)."""
    root = tmp_path_factory.mktemp("tiny")
    return {kind: builder(root / kind) for kind, builder in BUILDERS.items()}


def load(directory):
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModel.from_pretrained(directory).eval()
    return tok, model


def file_digests(directory):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize("kind", KINDS)
def test_builder_returns_directory_with_safetensors(kind, built):
    d = built[kind]
    assert isinstance(d, Path) and d.is_dir()
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "pytorch_model.bin" not in names


@pytest.mark.parametrize("kind", KINDS)
def test_auto_classes_load_and_give_hidden_states(kind, built):
    tok, model = load(built[kind])
    model_cls, tok_cls = EXPECTED_CLASSES[kind]
    assert type(model).__name__ == model_cls
    assert type(tok).__name__ == tok_cls
    assert tok.is_fast
    cfg = model.config
    assert cfg.hidden_size == HIDDEN_SIZE == 32
    assert cfg.num_hidden_layers == NUM_LAYERS == 2
    assert cfg.num_attention_heads == 2
    assert cfg.vocab_size == len(tok)
    assert 300 <= len(tok) <= 1000

    # Batches of two sentences of different lengths (GPT-2 has no pad token, so one at a time).
    batches = [[SENTENCE, OTHER]] if tok.pad_token is not None else [[SENTENCE], [OTHER]]
    for words in batches:
        pad = tok.pad_token is not None  # transformers 5 refuses padding=True without a pad token
        batch = tok(words, is_split_into_words=True, padding=pad, return_tensors="pt")
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        assert len(out.hidden_states) == NUM_LAYERS + 1
        for h in out.hidden_states:
            assert h.shape == (*batch["input_ids"].shape, HIDDEN_SIZE)
            assert torch.isfinite(h).all()


@pytest.mark.parametrize("kind", KINDS)
def test_split_into_words_and_word_ids(kind, built):
    tok, _ = load(built[kind])
    enc = tok([SENTENCE, OTHER], is_split_into_words=True)
    for i, words in enumerate([SENTENCE, OTHER]):
        word_ids = enc.word_ids(i)
        assert len(word_ids) == len(enc["input_ids"][i])
        real = [w for w in word_ids if w is not None]
        # every word gets >= 1 token, in order
        assert real == sorted(real)
        assert set(real) == set(range(len(words)))
    counts = [enc.word_ids(0).count(w) for w in range(len(SENTENCE))]
    assert max(counts) >= 2, counts  # at least one multi-subword word
    assert sum(c >= 2 for c in counts) >= 2
    assert min(counts) == 1, counts  # and common words stay whole


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_positions(kind, built):
    tok, _ = load(built[kind])
    enc = tok([SENTENCE], is_split_into_words=True)
    ids = enc["input_ids"][0]
    tokens = tok.convert_ids_to_tokens(ids)
    word_ids = enc.word_ids(0)
    if kind == "bert":
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert word_ids[0] is None and word_ids[-1] is None
        assert None not in word_ids[1:-1]
        assert [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token] == [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
        ]
        assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [
            0, 1, 2, 3, 4
        ]
    elif kind == "roberta":
        assert tokens[0] == "<s>" and tokens[-1] == "</s>"
        assert word_ids[0] is None and word_ids[-1] is None
        assert None not in word_ids[1:-1]
        assert [tok.bos_token, tok.pad_token, tok.eos_token, tok.unk_token, tok.mask_token] == [
            "<s>", "<pad>", "</s>", "<unk>", "<mask>"
        ]
        assert [tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id] == [
            0, 1, 2, 3, 4
        ]
        assert tok.cls_token == "<s>" and tok.sep_token == "</s>"
    else:
        assert None not in word_ids
        assert not set(ids) & set(tok.all_special_ids)
        assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>"
        assert tok.eos_token_id == 0
        assert tok.pad_token is None


@pytest.mark.parametrize("kind", ["gpt2", "roberta"])
def test_byte_level_add_prefix_space_is_saved_default(kind, built):
    config = json.loads((built[kind] / "tokenizer_config.json").read_text())
    assert config["add_prefix_space"] is True
    tok, _ = load(built[kind])
    assert tok.add_prefix_space is True
    enc = tok([SENTENCE], is_split_into_words=True, add_special_tokens=False)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
    word_ids = enc.word_ids(0)
    # Each word's first token starts with the byte-level space marker.
    firsts = [tokens[i] for i, w in enumerate(word_ids) if i == 0 or w != word_ids[i - 1]]
    assert all(t.startswith("\u0120") for t in firsts), firsts
    # The first word encodes like any other (same as a word after a space).
    plain = tok(" ".join(SENTENCE), add_special_tokens=False)["input_ids"]
    assert plain == enc["input_ids"][0]


def test_bert_lowercases(built):
    tok, _ = load(built["bert"])
    assert tok.do_lower_case is True
    assert tok("The QUICK Brown Fox")["input_ids"] == tok("the quick brown fox")["input_ids"]
    assert all(t == t.lower() for t in tok.get_vocab() if t not in tok.all_special_tokens)


def test_gpt2_optional_pad_token(tmp_path):
    d = build_tiny_gpt2(tmp_path / "gpt2pad", pad_token=True)
    tok, model = load(d)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == tok.eos_token_id == 0
    assert model.config.pad_token_id == 0
    batch = tok([SENTENCE, OTHER], is_split_into_words=True, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == NUM_LAYERS + 1


def _long_words():
    return ("the cat sat on the mat and the dog ran to the park " * 10).split()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("max_positions", [16, 64])
def test_max_positions_limit(kind, max_positions, built, tmp_path):
    d = built[kind] if max_positions == 64 else BUILDERS[kind](tmp_path / kind, max_positions=max_positions)
    tok, model = load(d)
    assert tok.model_max_length == max_positions
    limit = {"bert": "max_position_embeddings", "gpt2": "n_positions", "roberta": "max_position_embeddings"}[kind]
    offset = 2 if kind == "roberta" else 0  # RoBERTa positions start at padding_idx + 1
    assert getattr(model.config, limit) == max_positions + offset

    # Truncation to model_max_length gives exactly max_positions tokens (specials included) ...
    enc = tok([_long_words()], is_split_into_words=True, truncation=True, return_tensors="pt")
    ids = enc["input_ids"]
    assert ids.shape == (1, max_positions)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, max_positions, HIDDEN_SIZE)

    # ... and without truncation the tokenizer flags the sequence as too long.
    full = tok([_long_words()], is_split_into_words=True)["input_ids"][0]
    assert len(full) > tok.model_max_length

    # One more token than max_positions does not fit in the position table.
    word_id = tok(["cat"], is_split_into_words=True, add_special_tokens=False)["input_ids"][0]
    too_long = torch.cat([ids[:, :1], torch.tensor([[word_id]]), ids[:, 1:]], dim=1)
    assert too_long.shape == (1, max_positions + 1)
    with pytest.raises((IndexError, RuntimeError)), torch.no_grad():
        model(input_ids=too_long, attention_mask=torch.ones_like(too_long))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_builds(kind, tmp_path):
    builder = BUILDERS[kind]
    a = builder(tmp_path / "a", max_positions=32, seed=7)
    b = builder(tmp_path / "b", max_positions=32, seed=7)
    c = builder(tmp_path / "c", max_positions=32, seed=8)
    assert file_digests(a) == file_digests(b)
    sa = transformers.AutoModel.from_pretrained(a).state_dict()
    sb = transformers.AutoModel.from_pretrained(b).state_dict()
    sc = transformers.AutoModel.from_pretrained(c).state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # The tokenizer does not depend on the seed.
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_fresh_process_offline_load_and_same_files(built, tmp_path):
    """A fresh interpreter (new Rust hash seeds) builds byte-identical files and loads them with HF_HUB_OFFLINE=1."""
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "import transformers\n"
        "from tests.tiny_models import build_tiny_bert, build_tiny_gpt2, build_tiny_roberta\n"
        "out = Path(sys.argv[1])\n"
        "res = {}\n"
        "for kind, b in [('bert', build_tiny_bert), ('gpt2', build_tiny_gpt2), ('roberta', build_tiny_roberta)]:\n"
        "    d = b(out / kind)\n"
        "    tok = transformers.AutoTokenizer.from_pretrained(d)\n"
        "    model = transformers.AutoModel.from_pretrained(d)\n"
        "    enc = tok([['hello', 'world']], is_split_into_words=True, return_tensors='pt')\n"
        "    hs = model(**enc, output_hidden_states=True).hidden_states\n"
        "    res[kind] = [len(hs), hs[-1].shape[-1]]\n"
        "print(json.dumps(res))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res == {k: [NUM_LAYERS + 1, HIDDEN_SIZE] for k in KINDS}
    for kind in KINDS:
        assert file_digests(tmp_path / kind) == file_digests(built[kind]), kind


@pytest.mark.parametrize("kind", KINDS)
def test_build_is_fast(kind, built, tmp_path):
    # `built` has already paid the one-off import cost of torch/transformers.
    start = time.perf_counter()
    BUILDERS[kind](tmp_path / kind)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("bad", [0, 3, -1, 8.0, None])
def test_rejects_bad_max_positions(bad, tmp_path):
    for builder in BUILDERS.values():
        with pytest.raises(ValueError):
            builder(tmp_path / "x", max_positions=bad)
