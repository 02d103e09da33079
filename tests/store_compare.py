"""Helpers to compare two stores byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr


def array_data(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: arr[...] for name, arr in group.arrays()}


def chunk_file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every chunk/shard file of every root array."""
    path = Path(path)
    out = {}
    for f in sorted(path.glob("*/c/**/*")):
        if f.is_file():
            out[f.relative_to(path).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def assert_same_values(a: Path, b: Path) -> None:
    """Every array of the two stores holds the same values (floats: the same bits)."""
    da, db = array_data(a), array_data(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name].dtype == db[name].dtype, name
        if da[name].dtype.kind == "f":
            assert da[name].tobytes() == db[name].tobytes(), f"{name} differs"
        else:
            np.testing.assert_array_equal(da[name], db[name], err_msg=name)


def assert_stores_identical(a: Path, b: Path) -> None:
    """The same values and the same chunk files, byte for byte."""
    assert_same_values(a, b)
    assert chunk_file_hashes(a) == chunk_file_hashes(b)
