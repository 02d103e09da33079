"""Opening stores for probing: completeness, label sets, and train/dev/test agreement."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from store import schema
from store.errors import StrataError
from store.summary import open_store
from store.writer import quiet_codec_warnings

#: Parameters that must agree between the train, dev and test stores.
MUST_MATCH = ("model", "config_sha256", "layers", "word_vector")


@dataclass
class ProbeStore:
    """A complete strata store opened read-only, with the option name it came from."""

    path: Path
    option: str  # e.g. "--train", for error messages

    @cached_property
    def group(self) -> zarr.Group:
        with quiet_codec_warnings():
            group = open_store(self.path)
        attrs = group.attrs[schema.ROOT_ATTR]
        if not attrs.get("complete"):
            raise StrataError(f"{self.option}: {self.path} is an incomplete store; "
                              "finish it by rerunning the same strata extract command")
        return group

    @cached_property
    def parameters(self) -> dict:
        return dict(self.group.attrs[schema.ROOT_ATTR]["parameters"])

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.group[schema.LAYER][...]]

    @property
    def activations(self) -> zarr.Array:
        return self.group[schema.ACTIVATIONS]

    def label_names(self) -> list[str]:
        p = schema.TOKEN_LABEL_PREFIX
        return sorted(k[len(p):] for k in self.group.array_keys() if k.startswith(p))

    def labels(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Token-level label codes (-1 = missing) and class names of one label set."""
        key = schema.token_label_name(name)
        if key not in self.group:
            have = ", ".join(self.label_names()) or "none"
            raise StrataError(f"--labels: {self.path} has no token-level label set {name!r} (it has: {have})")
        arr = self.group[key]
        return arr[...].astype(np.int64), [str(c) for c in arr.attrs["classes"]]


def check_same_model(train: ProbeStore, other: ProbeStore) -> None:
    """Refuse a dev/test store extracted differently from the train store."""
    for key in MUST_MATCH:
        a, b = train.parameters.get(key), other.parameters.get(key)
        if a != b:
            raise StrataError(f"{other.option}: {other.path} differs from the train store {train.path} "
                              f"in {key} ({b!r} vs {a!r}); probes need stores of the same model and layers")
