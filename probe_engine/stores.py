"""Opening stores for probing: completeness, label sets, and train/dev/test agreement.

A probe reads either token vectors (``activations`` with token-level label sets)
or, with ``pool``, one pooled vector per sentence (``pooled_cls`` or
``pooled_mean`` with sentence-level label sets, Mosbach et al. 2020).  Sentences
the extractor skipped (too long for the model, NaN pooled vectors) are not rows.
A store holding SentEval's ``split`` label set contributes to each role only its
own split's sentences (``tr`` to --train, ``va`` to --dev, ``te`` to --test), so
one SentEval store can be passed as all three.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from store import schema
from store.errors import StrataError, first_line
from store.summary import open_store
from store.verify import verify_store
from store.writer import quiet_codec_warnings

#: Parameters that must agree between the train, dev and test stores, checked in this
#: order so the message names the cause (a variant's config hash differs too).
MUST_MATCH = ("model", "variant", "variant_seed", "config_sha256", "layers", "word_vector")
#: SentEval's split code for each store role.
ROLE_SPLITS = {"--train": "tr", "--dev": "va", "--test": "te"}
SPLIT_LABEL = "split"


@dataclass
class ProbeStore:
    """A complete strata store opened read-only, with the option name it came from."""

    path: Path
    option: str  # e.g. "--train", for error messages
    pool: str | None = None  # None: token vectors; "cls" or "mean": pooled sentence vectors

    @cached_property
    def group(self) -> zarr.Group:
        try:
            with quiet_codec_warnings():
                group = open_store(self.path)
        except StrataError as e:  # name the option: which of train, dev and test is wrong
            raise StrataError(f"{self.option}: {e}") from None
        attrs = group.attrs[schema.ROOT_ATTR]
        if not attrs.get("complete"):
            raise StrataError(f"{self.option}: {self.path} is an incomplete store; "
                              "finish it by rerunning the same strata extract command")
        return group

    def read(self, read):
        """``read()``, with a failure inside zarr or a codec (a truncated or corrupted
        shard, a damaged ``zarr.json``) as a one-line error naming the store."""
        try:
            return read()
        except StrataError:
            raise
        except Exception as e:
            raise StrataError(f"{self.option}: {self.path}: damaged store, cannot read it "
                              f"({type(e).__name__}: {first_line(e)}); run strata verify") from None

    @cached_property
    def identity(self) -> str:
        """A fingerprint of what the store holds: its root attributes and every manifest
        record (each carries the sha256 of the shards it vouches for).  Finished probe groups
        and neuron steps are reused only for the same fingerprint, so a store rebuilt at the
        same path (another corpus, or a fine-tuned checkpoint whose config is unchanged) is
        never taken for the old one."""
        digest = hashlib.sha256(json.dumps(dict(self.group.attrs), sort_keys=True, default=str).encode())
        manifest = self.path / schema.MANIFEST
        for record in sorted(manifest.rglob(schema.METADATA_FILE)) if manifest.exists() else []:
            digest.update(record.relative_to(self.path).as_posix().encode())
            digest.update(record.read_bytes())
        return digest.hexdigest()[:16]

    @cached_property
    def parameters(self) -> dict:
        return dict(self.group.attrs[schema.ROOT_ATTR]["parameters"])

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.group[schema.LAYER][...]]

    def has(self, key: str) -> bool:
        """Whether the store holds the node ``key`` (a damaged ``zarr.json``: one-line error)."""
        return self.read(lambda: key in self.group)

    @property
    def features(self) -> zarr.Array:
        """The (layer, row, neuron) array probes read: activations, or a pooled array."""
        if self.pool is None:
            return self.read(lambda: self.group[schema.ACTIVATIONS])
        name = schema.pooled_name(self.pool)
        if not self.has(name):
            raise StrataError(f"--pool: {self.path} has no {name} array (extract it with --pool {self.pool})")
        return self.read(lambda: self.group[name])

    def label_names(self, level: str | None = None) -> list[str]:
        """Label sets of one level (default: the level this store is read at)."""
        level = level or ("sentence" if self.pool else "token")
        p = schema.SENTENCE_LABEL_PREFIX if level == "sentence" else schema.TOKEN_LABEL_PREFIX
        return sorted(k[len(p):] for k in self.group.array_keys() if k.startswith(p))

    def labels(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Label codes per row (-1 = not a row) and class names of one label set."""
        if self.pool is None:
            key = schema.token_label_name(name)
            if not self.has(key):
                have = ", ".join(self.label_names()) or "none"
                hint = ("; it is a sentence-level label set: probe pooled sentence vectors with --pool cls or --pool mean"
                        if name in self.label_names("sentence") else "")
                raise StrataError(f"--labels: {self.path} has no token-level label set {name!r} (it has: {have}){hint}")
            arr = self.read(lambda: self.group[key])
            return self.read(lambda: arr[...]).astype(np.int64), [str(c) for c in arr.attrs["classes"]]
        key = schema.sentence_label_name(name)
        if not self.has(key):
            have = ", ".join(self.label_names()) or "none"
            raise StrataError(f"--labels: {self.path} has no sentence-level label set {name!r} (it has: {have}); "
                              "--pool probes need one label per sentence")
        arr = self.read(lambda: self.group[key])
        codes = self.read(lambda: arr[...]).astype(np.int64)
        codes[self.read(lambda: self.group[schema.SENTENCE_SKIPPED][...])] = -1
        codes[~self.role_rows()] = -1
        return codes, [str(c) for c in arr.attrs["classes"]]

    def require_rows(self, name: str) -> None:
        """Refuse a label set with no rows here (e.g. a SentEval store without this role's split)."""
        codes, _ = self.labels(name)
        if not (codes >= 0).any():
            why = (f" (no sentence of SentEval split {ROLE_SPLITS[self.option]!r})"
                   if self.pool and self.has(schema.sentence_label_name(SPLIT_LABEL)) else "")
            raise StrataError(f"{self.option}: {self.path} has no rows labelled in {name!r}{why}")

    def role_rows(self) -> np.ndarray:
        """Sentences this store contributes in its role: all, or its SentEval split's."""
        key = schema.sentence_label_name(SPLIT_LABEL)
        n = self.read(lambda: self.group[schema.SENTENCE_SKIPPED]).shape[0]
        if not self.has(key):
            return np.ones(n, bool)
        split = self.read(lambda: self.group[key])
        classes = [str(c) for c in split.attrs["classes"]]
        wanted = ROLE_SPLITS[self.option]
        if wanted not in classes:
            return np.zeros(n, bool)
        return self.read(lambda: split[...]) == classes.index(wanted)


def check_same_model(train: ProbeStore, other: ProbeStore) -> None:
    """Refuse a dev/test store extracted differently from the train store."""
    for key in MUST_MATCH:
        a, b = train.parameters.get(key), other.parameters.get(key)
        if a == b or (key == "model" and _same_directory(a, b)) or (key == "config_sha256"
                                                                    and _same_config(train, other)):
            continue
        raise StrataError(f"{other.option}: {other.path} differs from the train store {train.path} "
                          f"in {key} ({b!r} vs {a!r}); probes need stores of the same model and layers")


def _same_directory(a, b) -> bool:
    """Two spellings of one local model directory (a symlink, a relative path): extract's own test."""
    from extractor.model import same_model

    return isinstance(a, str) and isinstance(b, str) and same_model(a, b)


def _same_config(train: ProbeStore, other: ProbeStore) -> bool:
    """Config hashes that differ only in how they were computed: stores extracted before the
    hash left the model's path out hashed it in (extractor.model.legacy_config_sha256).  For
    one local model directory the config is read again and each store's hash is matched
    against both spellings of it."""
    a, b = train.parameters.get("model"), other.parameters.get("model")
    if not (_same_directory(a, b) and Path(a).expanduser().is_dir()):  # never a hub download from here
        return False
    from extractor import model as hf

    try:
        config = hf.load_config(a)
    except StrataError:
        return False
    current = hf.config_sha256(config)
    return all(store.parameters.get("config_sha256") in
               (current, hf.legacy_config_sha256(config, store.parameters["model"])) for store in (train, other))


def shared_rows_warning(stores: dict) -> str | None:
    """A warning when dev or test is the train store itself with no ``split`` label set to
    separate the roles: those scores are then training scores (allowed, but rarely meant)."""
    train = stores["train"]
    for role in ("dev", "test"):
        other = stores.get(role)
        if other is not None and Path(other.path).resolve() == Path(train.path).resolve() \
                and schema.sentence_label_name(SPLIT_LABEL) not in train.group:
            return (f"--{role} is the --train store {train.path} and it has no {SPLIT_LABEL!r} label set "
                    f"to separate them: {role} scores are scores on the training rows")
    return None


def verify_stores(stores) -> None:
    """``strata verify`` on each distinct store before anything is trained on it.

    A flipped bit in a shard or a label chunk reads back as a valid value (Blosc keeps
    no checksum, and the label arrays' zstd is written without one), so a damaged
    store would train without an error.  It costs one read of each store, hashed on
    every core (about 1 GB/s per core); ``--no-verify`` skips it.
    """
    seen = set()
    for store in stores:
        if (key := Path(store.path).resolve()) in seen:
            continue
        seen.add(key)
        try:
            verify_store(store.path)
        except StrataError as e:
            raise StrataError(f"{store.option}: {e} (strata verify checks it; --no-verify skips the check)") from None
