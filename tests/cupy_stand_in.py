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
float32 summation order.  The rules, as CuPy's source has them (checked against
cupy/_core/core.pyx, _kernel.pyx, _scalar.pyx, _routines_indexing.pyx and the
creation and manipulation modules):

- ``np.asarray(device)`` and any other implicit conversion: TypeError.
- Ufuncs and operators (and ``where``, built on a ufunc): device arrays, Python
  and NumPy scalars only; a host array, even 0-d (comparisons excepted), or a
  Python list is "Unsupported type".
- Other functions (``concatenate``, ``stack``, ``ascontiguousarray`` ...) refuse
  host arrays; those that pass their input through ``asarray`` take them
  (``asarray``, ``array``, ``asanyarray``, ``ix_``, ``tile``, ``atleast_*d``,
  ``hstack``, ``vstack``, ``dstack``), as do ``take``/``put``/``compress``.
- Host arrays as indices are taken.  A host array assigned through an index is
  taken with an advanced (array) index and refused with a basic one (slices,
  integers), where CuPy ``fill``s: "non-scalar numpy.ndarray cannot be used
  for fill"; a Python list there is "Unsupported type" (the fill kernel's).
- A 0-d device array converts with ``float``, ``int`` and ``bool`` but has no
  ``__index__``; reductions and element reads give 0-d device arrays.

Where CuPy quietly accepts host input in a function that only calls the
argument's own method (``cupy.sum(host)`` returns a host result), the stand-in
refuses: strata has no reason to pass host arrays there.
"""

from __future__ import annotations

import sys
import types

import numpy as np


#: Transfers made since ``install`` (``get``, ``asnumpy``, ``float()``, ``item()`` ... count as to the
#: host): a test can tell that the device path really ran.
TRANSFERS = {"to_device": 0, "to_host": 0}


class DeviceArray:
    """An array "on the device": NumPy data that refuses to mix with host arrays."""

    __slots__ = ("_a",)

    def __init__(self, data: np.ndarray):
        self._a = data

    # -- CuPy's rules (module docstring) --------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _ufunc_call(ufunc, inputs, kwargs, getattr(ufunc, method))

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, args, kwargs)

    # -- explicit transfer and Python conversions (CuPy allows these: they synchronize) --
    def get(self, stream=None) -> np.ndarray:
        TRANSFERS["to_host"] += 1
        return self._a.copy()

    def __float__(self):
        TRANSFERS["to_host"] += 1
        return float(self._a)

    def __int__(self):
        TRANSFERS["to_host"] += 1
        return int(self._a)

    def __bool__(self):
        TRANSFERS["to_host"] += 1
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
        if name in ("data", "ctypes"):  # CuPy: a device pointer / no such attribute; never host memory
            raise AttributeError(f"the CuPy stand-in hands out no host buffer (.{name})")
        value = getattr(self._a, name)
        if name in ("item", "tolist"):  # to the host, as Python values
            TRANSFERS["to_host"] += 1
            return value
        if callable(value):
            host_ok = name in HOST_ARGUMENT_METHODS
            return lambda *args, **kwargs: _call(value, args, kwargs, host_ok)
        return _wrap(value)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key, host_ok=True)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim and _is_basic_index(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if isinstance(value, (list, tuple)) and _is_basic_index(key):  # CuPy's fill kernel takes no list
            raise TypeError(f"Unsupported type {type(value)}")
        self._a[_unwrap(key, host_ok=True)] = _unwrap(value, host_ok=True)


#: Functions and methods whose CuPy versions pass host arguments through asarray.
HOST_ARGUMENT_FUNCTIONS = {"asarray", "array", "asanyarray", "ix_", "tile", "atleast_1d", "atleast_2d",
                           "atleast_3d", "hstack", "vstack", "dstack"}
HOST_ARGUMENT_METHODS = {"take", "put", "compress"}
#: Comparisons turn a 0-d host array into a scalar; other ufuncs refuse it.
COMPARISONS = {np.less, np.less_equal, np.equal, np.not_equal, np.greater, np.greater_equal}


def _is_basic_index(key) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, np.integer, slice)) for p in parts)


def _binary(ufunc):
    return (lambda self, other: _ufunc_call(ufunc, (self, other), {}),
            lambda self, other: _ufunc_call(ufunc, (other, self), {}))


def _inplace(ufunc):
    def method(self, other):
        _ufunc_operand(ufunc, other)
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
    setattr(DeviceArray, f"__{_name}__", lambda self, _u=_ufunc: _ufunc_call(_u, (self,), {}))
DeviceArray.__hash__ = None


def _unwrap(obj, host_ok: bool = False):
    """NumPy arguments for NumPy: device arrays unwrapped, host arrays refused
    (unless ``host_ok``), containers walked."""
    if isinstance(obj, DeviceArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        if host_ok:
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


def _ufunc_operand(ufunc, x) -> None:
    """CuPy's ufunc argument rule (_kernel.pyx ``_preprocess_arg``, _scalar.pyx)."""
    if isinstance(x, np.ndarray) and not (x.ndim == 0 and ufunc in COMPARISONS):
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)):
        raise TypeError(f"Unsupported type {type(x)}")


def _ufunc_call(ufunc, inputs, kwargs, function=None):
    for x in inputs:
        _ufunc_operand(ufunc, x)
    inputs = tuple(x.item() if isinstance(x, np.ndarray) else x for x in inputs)  # 0-d, compared
    return _call(function or ufunc, inputs, kwargs)


class _Namespace:
    """NumPy's functions (of a module such as ``numpy`` or ``numpy.linalg``) under the rules."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        value = getattr(self._source, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(value)
        if isinstance(value, np.ufunc):
            return lambda *args, **kwargs: _ufunc_call(value, args, kwargs)
        if name == "where":  # CuPy's where is a ufunc
            return lambda *args, **kwargs: _ufunc_call(None, args, kwargs, value) if len(args) > 1 \
                else _call(value, args, kwargs)
        if callable(value) and not isinstance(value, type):  # functions; dtypes pass as they are
            host_ok = name in HOST_ARGUMENT_FUNCTIONS
            return lambda *args, **kwargs: _call(value, args, kwargs, host_ok)
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
        if isinstance(a, DeviceArray):  # already on the device: CuPy returns it when nothing changes
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        if isinstance(a, (list, tuple)) and any(isinstance(x, DeviceArray) for x in a):
            # CuPy stacks a list of device arrays of one shape; anything else in the list goes
            # through numpy.array, which meets the device arrays' __array__
            if not all(isinstance(x, DeviceArray) and x.shape == a[0].shape for x in a):
                raise TypeError("Implicit conversion to a NumPy array is not allowed (a list mixing device "
                                "arrays with other items or shapes)")
            return _wrap(np.array(_unwrap(a), dtype=dtype, order=order or "K"))
        TRANSFERS["to_device"] += 1
        return _wrap(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order or "K", copy=True))

    # device -> host
    def asnumpy(self, a, stream=None):
        return a.get() if isinstance(a, DeviceArray) else np.asarray(a)

    def get_array_module(self, *args):
        return self if any(isinstance(a, DeviceArray) for a in args) else np


def install(monkeypatch) -> StandIn:
    """Make ``import cupy`` give the stand-in for the rest of a test."""
    stand_in = StandIn()
    monkeypatch.setitem(sys.modules, "cupy", stand_in)
    TRANSFERS.update(to_device=0, to_host=0)
    return stand_in
