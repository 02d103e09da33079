"""A CPU stand-in for CuPy that enforces CuPy's host/device rules.

Why this exists: CI has no GPU, so the ``--device cuda`` paths of the probe
engine would only ever run on a borrowed GPU machine, rarely.  The bug those
paths are most prone to is not arithmetic (the same ``xp`` lines run on NumPy
in every test) but a host array meeting a device array: CuPy refuses
``np.asarray(device_array)`` ("Implicit conversion to a NumPy array is not
allowed") and refuses NumPy arrays as operands of its functions and operators
("Unsupported type <class 'numpy.ndarray'>").  This module is NumPy underneath,
wrapped so that the same two mistakes raise ``TypeError`` here too.  Installed
as ``sys.modules["cupy"]`` (``install``), it lets strata's own
``array_module("cuda")`` pick it up, so whole commands run their GPU code path.

It checks the rules only: it is not a GPU and says nothing about speed or
float32 summation order.  Where CuPy is lenient it is lenient too (host arrays
as indices, as values assigned into a device array, and in ``ix_``); where its
behaviour is not certain it errs on the lenient side, so a failure here is a
real CuPy failure.
"""

from __future__ import annotations

import operator
import sys
import types

import numpy as np


class DeviceArray:
    """An array "on the device": NumPy data that refuses to mix with host arrays."""

    __slots__ = ("_a",)

    def __init__(self, data: np.ndarray):
        self._a = data

    # -- the two rules -------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _call(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, args, kwargs)

    # -- explicit transfer and Python conversions (CuPy allows these: they synchronize) --
    def get(self, stream=None) -> np.ndarray:
        return self._a.copy()

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return operator.index(self._a.item()) if self._a.ndim == 0 else operator.index(self._a)

    def __bool__(self):
        return bool(self._a)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __format__(self, spec):
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __repr__(self):
        return f"DeviceArray({self._a!r})"

    # -- everything else: NumPy's, with the rules applied -----------------------------
    def __getattr__(self, name):
        if name.startswith("__"):  # never NumPy's __array_interface__ & co.: that would be a silent transfer
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            return lambda *args, **kwargs: _call(value, args, kwargs)
        return _wrap(value)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, host_ok=True)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key, host_ok=True)] = _unwrap(value, host_ok=True)


def _binary(ufunc):
    return (lambda self, other: _call(ufunc, (self, other), {}),
            lambda self, other: _call(ufunc, (other, self), {}))


def _inplace(ufunc):
    def method(self, other):
        ufunc(self._a, _unwrap(other), out=self._a)
        return self
    return method


for _name, _ufunc in {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
                      "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
                      "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
                      "lshift": np.left_shift, "rshift": np.right_shift}.items():
    _forward, _reflected = _binary(_ufunc)
    setattr(DeviceArray, f"__{_name}__", _forward)
    setattr(DeviceArray, f"__r{_name}__", _reflected)
    setattr(DeviceArray, f"__i{_name}__", _inplace(_ufunc))
for _name, _ufunc in {"lt": np.less, "le": np.less_equal, "eq": np.equal, "ne": np.not_equal,
                      "gt": np.greater, "ge": np.greater_equal}.items():
    setattr(DeviceArray, f"__{_name}__", _binary(_ufunc)[0])
for _name, _ufunc in {"neg": np.negative, "pos": np.positive, "abs": np.absolute, "invert": np.invert}.items():
    setattr(DeviceArray, f"__{_name}__", lambda self, _u=_ufunc: _call(_u, (self,), {}))
DeviceArray.__hash__ = None


def _unwrap(obj, host_ok: bool = False):
    """NumPy arguments for NumPy: device arrays unwrapped, host arrays refused
    (unless ``host_ok``), containers walked."""
    if isinstance(obj, DeviceArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        if host_ok or obj.ndim == 0:  # a 0-d host array is treated as a scalar (lenient)
            return obj
        raise TypeError(f"Unsupported type {type(obj)}: a host (NumPy) array of shape {obj.shape} where the "
                        "device needs its own array; transfer it with xp.asarray first")
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, host_ok) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v, host_ok) for k, v in obj.items()}
    return obj


def _wrap(obj):
    """Results back on the device.  CuPy's reductions and element reads give 0-d
    device arrays, not host scalars, so NumPy scalars are wrapped too."""
    if isinstance(obj, np.ndarray):
        return DeviceArray(obj)
    if isinstance(obj, np.generic):
        return DeviceArray(np.asarray(obj))
    if isinstance(obj, (list, tuple)) and any(isinstance(o, (np.ndarray, np.generic)) for o in obj):
        # NumPy's named results (linalg.eigh's EighResult) are plain tuples in CuPy
        return (list if isinstance(obj, list) else tuple)(_wrap(o) for o in obj)
    return obj


def _call(function, args, kwargs, host_ok: bool = False):
    return _wrap(function(*_unwrap(args, host_ok), **_unwrap(kwargs, host_ok)))


class _Namespace:
    """NumPy's functions (of a module such as ``numpy`` or ``numpy.linalg``) under the rules."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        value = getattr(self._source, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(value)
        if callable(value) and not isinstance(value, type):  # functions and ufuncs; dtypes pass as they are
            return lambda *args, **kwargs: _call(value, args, kwargs)
        return value


class _Device:
    """``cupy.cuda.Device``: one device, usable as a context manager."""

    def __init__(self, index: int = 0):
        if int(index) != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {index} (the stand-in has one device)")

    def use(self):
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Stream:
    def synchronize(self):
        return None


class StandIn(_Namespace):
    """The ``cupy`` module stand-in."""

    ndarray = DeviceArray

    def __init__(self):
        super().__init__(np)
        self.linalg = _Namespace(np.linalg)
        self.cuda = types.SimpleNamespace(
            Device=_Device, get_current_stream=lambda: _Stream(),
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))

    # host -> device transfers: CuPy takes host data here
    def asarray(self, a, dtype=None, order=None):
        return _wrap(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order or "K", copy=True))

    def array(self, a, dtype=None, copy=True, order="K", ndmin=0):
        return _wrap(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order, ndmin=ndmin))

    def ix_(self, *args):  # CuPy's ix_ passes each argument through asarray
        return _wrap(np.ix_(*_unwrap(args, host_ok=True)))

    # device -> host
    def asnumpy(self, a, stream=None):
        return a.get() if isinstance(a, DeviceArray) else np.asarray(a)

    def get_array_module(self, *args):
        return self if any(isinstance(a, DeviceArray) for a in args) else np


def install(monkeypatch) -> StandIn:
    """Make ``import cupy`` give the stand-in for the rest of a test."""
    stand_in = StandIn()
    monkeypatch.setitem(sys.modules, "cupy", stand_in)
    return stand_in
