"""``strata extract``: corpus + model -> a complete store, resumable, in one or many processes.

Work is split by unit (= activation shard, see store/layout.py).  Every
process reads and tokenizes the corpus itself (cheap and deterministic), so
they all agree on the layout without exchanging data.  Process 0 creates the
store; then each process takes every P-th unfinished unit, so a resume may
use a different number of processes.  A unit's batches are a function of the
unit alone, which is why one process and many write the same bytes.
"""

from __future__ import annotations

import contextlib
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from extractor import alignment, linear_kernel, model as hf
from extractor.batching import token_budget_batches
from extractor.forward import FLOAT16_MAX, OutOfRange, forward_batch, to_stored
from extractor.readers import read_corpus
from extractor.streams import run_streams, torch_threads
from extractor.variants import build_model, check_variant, parse_variant, variant_config
from store import schema
from store.codecs import parse_codec
from store.errors import StrataError
from store.lock import exclusive_writer
from store.layout import Layout, default_geometry
from store.writer import StoreWriter, check_parameters, create_store, store_state

TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class UnitWork:
    """One unit in progress: its buffers, filled batch by batch, and its batches."""

    unit: int
    tokens: tuple[int, int]  # the unit's token range [start, stop)
    owned: tuple[int, int]  # the sentences [a, b) whose pooled rows it writes
    block: np.ndarray  # (layer, token, neuron) activation shard
    pooled: dict[str, np.ndarray]  # kind -> (layer, owned sentence, neuron); "attention" when stored
    batches: list[np.ndarray]
    started: float


@dataclass
class ExtractOptions:
    model: str
    input: str
    format: str
    out: str
    columns: list[str] | None = None
    labels: str | None = None
    layers: str = "all"
    word_vector: str = "last"
    pool: tuple[str, ...] = ("cls", "mean")
    dtype: str = "float16"
    codec: str = "lossless"
    batch_tokens: int = 1024
    device: str = "cpu"
    max_sentences: int | None = None
    shard_tokens: int | None = None
    chunk_tokens: int | None = None
    variant: str | None = None  # see extractor/variants.py
    variant_seed: int | None = None  # None: not given (0 for the variants that draw weights)
    attention: str | None = None  # "cls": store the CLS token's attention rows
    linear_kernel: str = "auto"  # see extractor/linear_kernel.py
    threads: int | None = None  # CPU streams (extractor/streams.py); None = torch's thread count


def parse_layers(spec: str, n_hidden_states: int, model: str) -> list[int]:
    """``all`` or a comma list of hidden-state indices (0 = embedding output)."""
    if spec == "all":
        return list(range(n_hidden_states))
    try:
        given = [int(x) for x in spec.split(",")]
    except ValueError:
        raise StrataError(f"--layers: expected 'all' or comma-separated integers, got {spec!r}") from None
    # A repeated layer is most likely a typo for another one: say so rather than drop it.
    repeated = sorted({x for x in given if given.count(x) > 1})
    if repeated:
        raise StrataError(f"--layers: layer {repeated[0]} is given more than once in {spec!r}")
    layers = sorted(given)
    bad = [x for x in layers if not 0 <= x < n_hidden_states]
    if bad:
        raise StrataError(f"--layers: layer {bad[0]} is out of range for {model} "
                          f"(0..{n_hidden_states - 1}, 0 = embedding output)")
    return layers


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("strata", "torch", "transformers", "accelerate", "zarr", "numcodecs", "numpy", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _codes(values: list[str], name: str, path: str) -> tuple[np.ndarray, list[str]]:
    """Label strings -> int16 codes over the sorted class names."""
    classes = sorted(set(values))
    if len(classes) > np.iinfo(np.int16).max:  # often words read as labels: --columns out of order
        raise StrataError(f"{path}: label set {name!r} has {len(classes):,} classes; at most "
                          f"{np.iinfo(np.int16).max:,} are supported (is it a label column?)")
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((index[v] for v in values), dtype=np.int16, count=len(values)), classes


def corpus_arrays(corpus, enc: alignment.Encoded, counts: np.ndarray, word_vector: str, tokenizer) -> dict:
    """Per-token and per-sentence arrays that need no forward pass."""
    token_sentence, token_word, token_text = [], [], []
    token_labels = {name: [] for name in corpus.token_labels}
    for i, words in enumerate(corpus.sentences):
        if counts[i] == 0:
            continue
        if word_vector == "subword":
            positions = np.flatnonzero(enc.word_ids[i] >= 0)
            word_of = enc.word_ids[i][positions]
            text = tokenizer.convert_ids_to_tokens(enc.input_ids[i][positions].tolist())
        else:
            word_of = np.arange(len(words))
            text = words
        token_sentence.append(np.full(len(word_of), i, dtype=np.int32))
        token_word.append(word_of.astype(np.int32))
        token_text.extend(text)
        for name, labels in corpus.token_labels.items():
            token_labels[name].extend(labels[i][w] for w in word_of)
    empty = np.zeros(0, dtype=np.int32)
    return {
        "token_sentence": np.concatenate(token_sentence) if token_sentence else empty,
        "token_word": np.concatenate(token_word) if token_word else empty,
        "token_text": token_text,
        "sentence_skipped": enc.skipped,
        "token_labels": {name: _codes(v, name, corpus.path) for name, v in token_labels.items()},
        "sentence_labels": {name: _codes(v, name, corpus.path) for name, v in corpus.sentence_labels.items()},
    }


class Extraction:
    """Everything one process needs to extract its share of the units."""

    def __init__(self, opts: ExtractOptions, argv: list[str] | None = None):
        self.opts = opts
        opts.model, opts.input, opts.out = str(opts.model), str(opts.input), str(opts.out)
        self.argv = list(sys.argv if argv is None else argv)
        self.out = Path(opts.out)
        if opts.batch_tokens < 1:
            raise StrataError(f"--batch-tokens: must be a positive integer, got {opts.batch_tokens}")
        # None means the default size; 0 must not silently mean the same.
        if opts.shard_tokens is not None and opts.shard_tokens < 1:
            raise StrataError(f"--shard-tokens: must be a positive integer, got {opts.shard_tokens}")
        if opts.threads is not None and opts.threads < 1:
            raise StrataError(f"--threads: must be a positive integer, got {opts.threads}")
        #: parallel batches on a CPU; the stored bytes do not depend on it, so it is not a parameter
        self.streams = opts.threads or torch.get_num_threads()
        if opts.word_vector not in alignment.WORD_VECTORS:
            raise StrataError(f"--word-vector: choose from {', '.join(alignment.WORD_VECTORS)}")
        bad_pool = [p for p in opts.pool if p not in schema.POOL_KINDS]
        if bad_pool:
            raise StrataError(f"--pool: unknown pooling {bad_pool[0]!r}; choose from cls, mean, none")
        if opts.dtype not in ("float16", "float32"):
            raise StrataError(f"--dtype: choose float16 or float32, got {opts.dtype!r}")
        parse_codec(opts.codec, np.dtype(opts.dtype))  # a bad --codec is refused before anything is loaded
        self.corpus = read_corpus(opts.input, opts.format, columns=opts.columns, labels_path=opts.labels,
                                  max_sentences=opts.max_sentences)
        if opts.attention not in (None, "cls"):
            raise StrataError(f"--attention: choose cls or none, got {opts.attention!r}")
        self.variant = parse_variant(opts.variant, opts.variant_seed)
        self.linear_kernel = linear_kernel.resolve(opts.linear_kernel, opts.device.split(":")[0])
        pretrained = hf.load_config(opts.model)
        self.pretrained_blocks = hf.n_layers(pretrained)
        if self.variant is not None:
            check_variant(self.variant, self.pretrained_blocks, opts.model)
        self.config = variant_config(pretrained, self.variant)
        self.tokenizer = hf.load_tokenizer(opts.model)
        self.layer_ids = parse_layers(opts.layers, hf.n_layers(self.config) + 1, opts.model)
        self.hidden = hf.hidden_size(self.config)
        self.max_len = hf.max_positions(self.config, self.tokenizer)
        self.enc = alignment.tokenize_corpus(self.tokenizer, self.corpus.sentences, self.max_len)
        self.counts = alignment.tokens_per_sentence(self.enc, self.corpus.sentences, opts.word_vector)
        self.tokens_sha256 = alignment.tokens_sha256(self.enc)
        #: set when the pretrained weights are loaded (load_model); None for --variant random-init
        self.weights_sha256: str | None = None
        #: the existing store's weights hash (check_store), compared once the model is loaded
        self.existing_weights: str | None = None
        if self.counts.sum() == 0:
            raise StrataError(f"{opts.input}: every sentence is longer than the model's {self.max_len} positions")
        chunk, shard = default_geometry(len(self.layer_ids), self.hidden, np.dtype(opts.dtype).itemsize)
        chunk = opts.chunk_tokens or min(chunk, opts.shard_tokens or chunk)
        shard = opts.shard_tokens or shard
        if shard % chunk:
            raise StrataError(f"--shard-tokens: {shard} is not a multiple of the chunk size {chunk}")
        self.layout = Layout(np.r_[0, np.cumsum(self.counts)].astype(np.int64), shard, chunk)
        self.attention_shape = None  # (blocks, heads, positions) of attention_cls
        if opts.attention:
            width = max(len(self.enc.input_ids[i]) for i in np.flatnonzero(~self.enc.skipped))
            self.attention_shape = (hf.n_layers(self.config), hf.attention_heads(self.config), int(width))

    # -- what is recorded --------------------------------------------------
    def parameters(self) -> dict:
        """Everything that changes the stored bytes; a resume must match it."""
        o = self.opts
        return {
            "model": hf.model_identity(o.model), "config_sha256": hf.config_sha256(self.config),
            "tokenizer": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer),
            "layers": self.layer_ids, "word_vector": o.word_vector, "pool": list(o.pool),
            "dtype": o.dtype, "codec": o.codec, "batch_tokens": o.batch_tokens,
            "shard_tokens": self.layout.shard_tokens, "chunk_tokens": self.layout.chunk_tokens,
            "max_positions": self.max_len, "device": o.device.split(":")[0],
            "dataset_sha256": self.corpus.sha256, "format": o.format, "columns": o.columns,
            "max_sentences": o.max_sentences, "tokens_sha256": self.tokens_sha256,
            **({"weights_sha256": self.weights_sha256} if self.weights_sha256 else {}),
            # torch's kernel is what every store used before --linear-kernel: not recorded, so those resume
            **({"linear_kernel": self.linear_kernel} if self.linear_kernel != "torch" else {}),
            **self.variant_record(),
            **({"attention": o.attention} if o.attention else {}),
        }

    def variant_record(self) -> dict:
        """The variant's entries (absent for the pretrained model, so older stores still resume)."""
        if self.variant is None:
            return {}
        seeded = self.variant.kind in ("random-init", "reinit")
        record = {"variant": self.variant.spec(), "variant_seed": self.variant.seed if seeded else None}
        if self.variant.kind == "reinit":
            # children before parents since stores of this key; older reinit stores drew in another
            # order (and lost GPT-2's scaled c_proj init), so they are refused rather than resumed
            record["reinit_order"] = "children-first"
        return record

    def provenance(self) -> dict:
        return {
            "model": self.opts.model, "model_type": self.config.model_type,
            "config_sha256": hf.config_sha256(self.config),
            "tokenizer": {"class": type(self.tokenizer).__name__, "name": self.tokenizer.name_or_path},
            "aggregation": {"word_vector": self.opts.word_vector, "pool": list(self.opts.pool),
                            "special_tokens": "excluded from token arrays and from mean pooling"},
            "dataset": {"path": str(self.corpus.path), "labels_path": self.opts.labels,
                        "format": self.opts.format, "sha256": self.corpus.sha256,
                        "sentences": len(self.corpus.sentences)},
            "versions": _versions(),
            "linear_kernel": self.linear_kernel,
            "command": self.argv,
            "options": asdict(self.opts),
            **self.variant_record(),
        }

    # -- the store ---------------------------------------------------------
    def check_store(self) -> str:
        """Refuse foreign paths and mismatched parameters (read-only, every process)."""
        state = store_state(self.out)
        if state == "planned":
            from store.writer import open_group_read

            group = open_group_read(self.out)
            existing = dict(group.attrs[schema.ROOT_ATTR]["parameters"])
            requested = self.parameters()
            # The weights are compared once they are loaded (load_model).  Stores written
            # before the tokens were hashed have their sentence offsets compared instead.
            self.existing_weights = existing.pop("weights_sha256", None)
            requested.pop("weights_sha256", None)
            if "tokens_sha256" not in existing:
                del requested["tokens_sha256"]
            if sorted(existing.get("pool", [])) == sorted(requested["pool"]):  # the order stores nothing
                requested["pool"] = existing["pool"]
            # Another spelling of the same model is the same model; stores written
            # before either value was made spelling-independent recorded the raw
            # --model string and a config hash that included it.
            if hf.same_model(existing.get("model"), self.opts.model):
                requested["model"] = existing["model"]
                if existing.get("config_sha256") == hf.legacy_config_sha256(self.config, existing["model"]):
                    requested["config_sha256"] = existing["config_sha256"]
            derived = tuple(k for k, given in (("shard_tokens", self.opts.shard_tokens),
                                               ("chunk_tokens", self.opts.chunk_tokens)) if given is None)
            check_parameters(self.out, existing, requested, UNRECORDED_PARAMETERS, derived)
            stored_offsets = group[schema.SENTENCE_OFFSETS][...]
            if not np.array_equal(stored_offsets, self.layout.offsets):
                raise StrataError(f"--out: {self.out} holds another tokenization of {self.opts.input} (its "
                                  "sentence offsets differ from this command's: has the tokenizer changed?); "
                                  "use a new --out")
        return state

    def create(self) -> None:
        create_store(self.out, layout=self.layout, layer_ids=self.layer_ids, hidden=self.hidden,
                     dtype=self.opts.dtype, codec=self.opts.codec, pool=list(self.opts.pool),
                     parameters=self.parameters(), provenance=self.provenance(), attention=self.attention_shape,
                     corpus=corpus_arrays(self.corpus, self.enc, self.counts, self.opts.word_vector,
                                          self.tokenizer))

    def summary(self) -> dict:
        return {"sentences": len(self.corpus.sentences), "tokens": self.layout.n_tokens,
                "sentences_skipped": int(self.enc.skipped.sum()), "max_positions": self.max_len,
                "words_replaced_by_unk": self.enc.replaced_words}

    # -- the work ----------------------------------------------------------
    def load_model(self, device: str):
        """The model to extract from, on ``device``; refuses weights other than the existing
        store's and a tokenizer whose ids the model has no embeddings for."""
        def pretrained():
            model = hf.load_pretrained(self.opts.model)
            self.weights_sha256 = hf.weights_sha256(model)  # before any --variant changes them
            return hf.to_device(model, device)

        model = hf.to_device(build_model(pretrained, self.config, self.variant, self.pretrained_blocks,
                                         self.opts.model), device)
        self._check_vocabulary(model)
        if self.existing_weights is not None:
            check_parameters(self.out, {"weights_sha256": self.existing_weights},
                             {"weights_sha256": self.weights_sha256})
        if self.opts.attention:
            # Fused attention kernels (SDPA, flash) do not return attention weights.
            model.set_attn_implementation("eager")
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # no key/value cache: we never generate
        linear_kernel.use_kernel(model, self.linear_kernel)
        return model

    def _check_vocabulary(self, model) -> None:
        """Every token id of the corpus must have an embedding row: a tokenizer from another
        model would otherwise fail inside the first forward pass, after the store exists."""
        try:
            rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
        except (NotImplementedError, AttributeError):  # a model without the accessor: nothing to check
            rows = None
        used = [ids for ids, skip in zip(self.enc.input_ids, self.enc.skipped) if len(ids) and not skip]
        top = max((int(ids.max()) for ids in used), default=-1)
        if rows is not None and top >= rows:
            raise StrataError(f"--model: the tokenizer of {self.opts.model} gives token id {top}, but the model "
                              f"has {rows} embeddings: tokenizer and weights do not belong together")

    def run_units(self, units: list[int], writer: StoreWriter, model, device: str, show_progress: bool,
                  process: int = 0) -> None:
        """Compute and write the given units.

        On a CPU the batches run on ``self.streams`` parallel streams of one
        torch thread each, and each finished unit is compressed and written on a
        writer thread beside them (extractor/streams.py says why); on a GPU one
        stream computes while the writer writes.  At most streams + 1 units are
        in memory; an error stops the run after the batches in flight.
        """
        total = int(sum(stop - start for start, stop in map(self.layout.unit_tokens, units)))
        bar_lock = threading.Lock()
        with tqdm(total=total, unit="tok", unit_scale=True, desc="extract", disable=not show_progress or not units,
                  mininterval=1.0, smoothing=0.1) as bar, \
                torch_threads(1) if device == "cpu" else contextlib.nullcontext():

            def compute(work: UnitWork, batch: np.ndarray) -> None:
                done = self._compute_batch(work, batch, model, device)
                with bar_lock:
                    bar.update(done)

            def write(work: UnitWork) -> None:
                # which process wrote the unit: provenance, and how a test sees the work split
                stats = {"seconds": round(time.perf_counter() - work.started, 3), "process": process}
                writer.write_unit(work.unit, work.block, work.pooled, stats)

            run_streams(units, self._open_unit, lambda work: work.batches, compute, write,
                        self.streams if device == "cpu" else 1)

    def _open_unit(self, unit: int) -> UnitWork:
        """Empty buffers for a unit's activation shard and the pooled rows of the
        sentences it owns, and its batches."""
        start, stop = self.layout.unit_tokens(unit)
        n_layers = len(self.layer_ids)
        a, b = self.layout.owned_sentences(unit)
        pooled = {k: np.full((n_layers, b - a, self.hidden), np.nan, dtype=self.opts.dtype) for k in self.opts.pool}
        if self.attention_shape:
            blocks, heads, width = self.attention_shape
            pooled["attention"] = np.full((blocks, b - a, heads, width), np.nan, dtype=self.opts.dtype)
        sentences = np.union1d(self.layout.unit_sentences(unit),
                               np.arange(a, b)[~self.enc.skipped[a:b]]).astype(np.int64)
        lengths = np.array([len(self.enc.input_ids[i]) for i in sentences], dtype=np.int64)
        return UnitWork(unit=unit, tokens=(start, stop), owned=(a, b),
                        block=np.empty((n_layers, stop - start, self.hidden), dtype=self.opts.dtype),
                        pooled=pooled, batches=token_budget_batches(sentences, lengths, self.opts.batch_tokens),
                        started=time.perf_counter())

    def _compute_batch(self, work: UnitWork, batch: np.ndarray, model, device: str) -> int:
        """Run one batch and place its rows into the unit's buffers (rows no other
        batch writes, so streams never touch the same memory); returns the unit's tokens it filled."""
        start, stop = work.tokens
        a, b = work.owned
        out = forward_batch(model, [self.enc.input_ids[i] for i in batch],
                            [self.enc.word_ids[i] for i in batch], layer_ids=self.layer_ids,
                            word_vector=self.opts.word_vector, pool=list(self.opts.pool),
                            pad_id=self.pad_id, cls_id=self.tokenizer.cls_token_id, device=device,
                            attention=self.attention_shape is not None)
        # Global token index of every row the batch produced; keep this unit's.
        firsts = np.cumsum(out.sizes) - out.sizes
        rows = np.arange(out.sizes.sum()) + np.repeat(self.layout.offsets[batch] - firsts, out.sizes)
        keep = (rows >= start) & (rows < stop)
        sentence_of_row = np.repeat(batch, out.sizes)
        _place(work.block, rows[keep] - start, self._stored(_rows(out.tokens, keep), sentence_of_row[keep]))
        owned = (batch >= a) & (batch < b)
        for kind, values in out.pooled.items():
            _place(work.pooled[kind], batch[owned] - a, self._stored(_rows(values, owned), batch[owned]))
        if out.attention is not None:
            # weights lie in [0, 1]: no range check; positions past each sentence stay NaN
            cls_rows = out.attention[:, torch.from_numpy(np.flatnonzero(owned))].cpu().numpy()
            for r, sentence in enumerate(batch[owned]):
                n = len(self.enc.input_ids[sentence])
                work.pooled["attention"][:, sentence - a, :, :n] = cls_rows[:, r, :, :n]
        return int(keep.sum())

    @property
    def pad_id(self) -> int:
        """Padding is masked out, so any id works when the tokenizer has none (GPT-2)."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return candidate
        return 0

    def _stored(self, values, sentence_of_row: np.ndarray) -> np.ndarray:
        """Cast for storage; never store inf, NaN or a float16 overflow silently."""
        try:  # cast on the device (half the bytes to copy for float16), then to the host
            return to_stored(values, TORCH_DTYPES[self.opts.dtype]).cpu()
        except OutOfRange as e:
            # sentences counted from 1, as a reader counts them in the file
            where = f"layer {self.layer_ids[e.layer]}, sentence {int(sentence_of_row[e.row]) + 1} of {self.opts.input}"
            if e.what == "non-finite":
                raise StrataError(f"the model produced non-finite activations at {where}") from None
            # the store stays, incomplete, with float16 among its parameters: a rerun with
            # float32 on the same --out would be refused as different parameters
            raise StrataError(f"activations exceed the float16 range (|x| = {e.value:.6g} > {FLOAT16_MAX:g}) "
                              f"at {where}; rerun with --dtype float32 and a new --out "
                              f"(or delete {self.opts.out}, created for float16)") from None


def _rows(values: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """``values[:, keep]``, without a copy when every row is kept (the usual case)."""
    return values if keep.all() else values[:, torch.from_numpy(np.flatnonzero(keep))]


def _place(target: np.ndarray, rows: np.ndarray, values: torch.Tensor) -> None:
    """``target[:, rows] = values``, scattered by torch straight into numpy's memory."""
    torch.from_numpy(target)[:, torch.from_numpy(rows)] = values


def extract(opts: ExtractOptions, argv: list[str] | None = None) -> dict:
    """Run (or resume) an extraction in this process's share; returns the summary.

    Under ``accelerate launch`` every process calls this; errors found by any
    process are shared so that all of them stop with the same message instead
    of waiting on each other.
    """
    from accelerate import PartialState

    state = PartialState(cpu=opts.device == "cpu")
    device = _device(opts.device, state)
    ex = Extraction(opts, argv)
    # One run per store (store/lock.py): the main process locks before anyone looks
    # at --out, so no other run can create, clear or finish it under this one.
    with contextlib.ExitStack() as held:
        failure = None
        if state.is_main_process:
            try:
                held.enter_context(exclusive_writer(ex.out, "strata extract"))
            except StrataError as e:
                failure = str(e)
        _all_ok(state, failure)  # every process stops if another run holds the store
        return _extract_locked(ex, state, device)


def _extract_locked(ex: Extraction, state, device: str) -> dict:
    store_status = ex.check_store()  # read-only; every process gets the same answer
    if store_status == "planned" and (writer := StoreWriter(ex.out, ex.layout)).complete:
        if changed := writer.changed_files():  # not "already complete": it would be read as whole
            raise StrataError(f"--out: {ex.out} is marked complete but {changed[0]} (damaged after it was "
                              "finished); run strata verify, and extract into a new --out")
        return {**ex.summary(), "status": "already complete", "path": str(ex.out)}
    # The model is loaded before the store is created, so weights that do not
    # load (or a device they do not fit) leave nothing behind that a corrected
    # --model would then be refused by.
    try:
        model, failure = ex.load_model(device), None
    except StrataError as e:
        model, failure = None, str(e)
    _all_ok(state, failure)  # nobody creates before everyone has looked and loaded
    if store_status != "planned":
        _all_ok(state, _attempt(ex.create) if state.is_main_process else None)
    writer = StoreWriter(ex.out, ex.layout)
    failure = None
    if state.is_main_process:
        writer.remove_partial_files()
        failure = _attempt(lambda: _forget_damaged_units(writer))
    _all_ok(state, failure)  # the records are final before anyone lists the pending units
    pending = writer.pending_units()
    _all_ok(state, None)  # everyone has listed the same pending units
    mine = pending[state.process_index::state.num_processes]
    if not mine:
        model = None  # nothing to do in this process: free the memory
    started = time.perf_counter()
    _all_ok(state, _attempt(lambda: ex.run_units(mine, writer, model, device, show_progress=state.is_main_process,
                                                       process=state.process_index)))
    if state.is_main_process:
        if writer.pending_units():
            failure = f"{ex.out}: units still missing after the run; rerun the same command"
        else:
            failure = _attempt(lambda: writer.finalize(ex.summary()))
    _all_ok(state, failure if state.is_main_process else None)
    seconds = time.perf_counter() - started
    tokens = int(sum(stop - start for start, stop in map(ex.layout.unit_tokens, mine)))
    return {**ex.summary(), "status": "complete", "path": str(ex.out), "seconds": round(seconds, 2),
            "tokens_per_second_this_process": round(tokens / seconds, 1) if seconds else None,
            "processes": state.num_processes}


#: What a parameter missing from a store's record (or this run's) means: not recorded at
#: the value every store had before the option existed (``parameters`` above).
UNRECORDED_PARAMETERS = {"linear_kernel": "torch", "attention": "none"}


def _forget_damaged_units(writer: StoreWriter) -> None:
    """A resume redoes the recorded units whose files are not what their records vouch
    for (:meth:`StoreWriter.damaged_units`), saying which and why."""
    for unit, problem in writer.damaged_units().items():
        print(f"strata extract: warning: {writer.path}: unit {unit} is redone ({problem})", file=sys.stderr)
        writer.forget_unit(unit)


def _device(requested: str, state) -> str:
    import torch

    if requested == "cpu":
        return "cpu"
    kind, _, index = requested.partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise StrataError("--device: cuda requested but no CUDA device is available")
        # Checked here, before any store exists: torch would only fail when the model moves.
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise StrataError(f"--device: {requested} is out of range: this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''} (cuda:0..cuda:{count - 1})")
        return str(state.device) if state.num_processes > 1 else requested
    raise StrataError(f"--device: choose cpu, cuda or cuda:N, got {requested!r}")


def _attempt(step) -> str | None:
    """Run ``step``; return its error message instead of raising."""
    try:
        step()
    except StrataError as e:
        return str(e)
    return None


def _all_ok(state, failure: str | None) -> None:
    """A barrier that also shares failures: raise everywhere if anyone failed."""
    if state.num_processes == 1:
        if failure:
            raise StrataError(failure)
        return
    from accelerate.utils import gather_object

    failures = [f for f in gather_object([failure]) if f]
    if failures:
        raise StrataError(failures[0])
