"""One array-module code path for the CPU (NumPy) and the GPU (CuPy).

Every numerical routine of the probe engine takes its array module ``xp`` from
here and never imports numpy or cupy for arithmetic itself, so the same lines
run on both.  Results always come back to the host as NumPy arrays.
"""

from __future__ import annotations

import numpy as np

from store.errors import StrataError


def array_module(device: str):
    """``numpy`` for ``cpu``, ``cupy`` for ``cuda`` (a clear error when CuPy or a GPU is missing)."""
    if device == "cpu":
        return np
    kind, colon, index = device.partition(":")
    if kind == "cuda":
        if colon and not index.isdigit():
            raise StrataError(f"--device: {device!r} is not cuda or cuda:N")
        try:
            import cupy
        except ImportError:
            raise StrataError("--device cuda: CuPy is not installed (pip install 'strata[gpu]')") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError
        except Exception:
            raise StrataError("--device cuda: no CUDA GPU is visible") from None
        if colon:
            count = cupy.cuda.runtime.getDeviceCount()
            if int(index) >= count:
                raise StrataError(f"--device: {device} is out of range: this machine has {count} CUDA "
                                  f"device{'s' if count != 1 else ''}")
            cupy.cuda.Device(int(index)).use()
        return cupy
    raise StrataError(f"--device: {device!r} is not cpu or cuda")


def gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def to_numpy(a) -> np.ndarray:
    """Host copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def module_of(a):
    """The array module an array belongs to (NumPy unless it is a CuPy array)."""
    return np if isinstance(a, (np.ndarray, np.generic)) else __import__("cupy").get_array_module(a)
