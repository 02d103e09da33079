"""The ``--device cuda`` code paths of probe, neurons, compare and the estimator, run
on the CPU under a CuPy stand-in that refuses what CuPy refuses
(tests/cupy_stand_in.py): a host array where a device array is needed, and an
implicit device-to-host conversion.

CI has no GPU, so tests/test_gpu_paths.py is skipped there; these run its
checks (all but the extractor's, which runs on torch, not CuPy) and
tests/test_probe_cupy.py's (the same functions) in every run, and each test
checks that data really went to the stand-in's device and came back.  They
hold the GPU path's host/device discipline and its results against the CPU's;
only a real GPU can check CuPy's own kernels and float32 summation order,
which test_gpu_paths.py does when one is present.
"""

from __future__ import annotations

import numpy as np
import pytest

from probe_engine.backend import gpu_available
from tests import test_gpu_paths as on_gpu
from tests import test_probe_cupy as solver_on_gpu
from tests.cupy_stand_in import TRANSFERS, StandIn, install
from tests.test_compare import tiny_stores  # noqa: F401  (module fixtures reused)


@pytest.fixture
def cuda_stand_in(monkeypatch):
    yield install(monkeypatch)
    # a path that never moved its data to the device would pass on NumPy and prove nothing
    assert TRANSFERS["to_device"] > 0 and TRANSFERS["to_host"] > 0, f"the device path did not run: {TRANSFERS}"


def test_every_gpu_check_runs_here():
    """The wrappers below cover test_gpu_paths.py (but its torch-only extract test) and
    test_probe_cupy.py: a check added there is not silently left out here."""
    import inspect

    here = inspect.getsource(inspect.getmodule(test_every_gpu_check_runs_here))
    gpu_checks = {name for name in vars(on_gpu) if name.startswith("test_")} - {"test_extract_on_cuda_matches_cpu"}
    assert len(gpu_checks) >= 6 and all(f"on_gpu.{name}(" in here for name in gpu_checks), gpu_checks
    assert CHECKS and all(name.startswith("test_cupy_") for name in CHECKS)


@pytest.fixture(params=["stand-in", "cupy"])
def device_module(request, monkeypatch):
    """The stand-in, and real CuPy where a GPU is present: there the same rules are checked
    against CuPy itself, which is what keeps the stand-in honest."""
    if request.param == "cupy":
        if not gpu_available():
            pytest.skip("no CUDA GPU with CuPy here: the stand-in's rules are not checked against CuPy in this run")
        import cupy
        return cupy
    return install(monkeypatch)


def test_the_stand_in_refuses_what_cupy_refuses(device_module):
    cp = device_module

    def refused(error, message, action):  # the stand-in's words; CuPy's differ for some
        with pytest.raises(error, match=message if isinstance(cp, StandIn) else None):
            action()

    d = cp.asarray(np.arange(3.0))
    assert cp.asarray(d) is d
    refused(TypeError, "Implicit conversion", lambda: cp.asarray([d, np.ones(3)]))  # a mixed list
    np.testing.assert_array_equal(cp.asarray([d, d]).get(), [[0.0, 1.0, 2.0]] * 2)
    refused(TypeError, "Implicit conversion to a NumPy array is not allowed", lambda: np.asarray(d))
    for mixed in (lambda: d + np.ones(3), lambda: np.ones(3) + d, lambda: cp.where(np.ones(3, bool), d, 0.0),
                  lambda: cp.concatenate([d, np.ones(3)]), lambda: d @ np.ones(3),
                  lambda: d * np.array(2.0), lambda: d + [1.0, 2.0, 3.0]):  # also a 0-d host array, a list
        refused(TypeError, "Unsupported type", mixed)

    def fill():
        d[:2] = np.ones(2)  # a basic index fills: host arrays refused
    refused(ValueError, "non-scalar numpy.ndarray cannot be used for fill", fill)

    def fill_from_a_list():
        d[:2] = [1.0, 2.0]  # and so are lists
    refused(TypeError, "Unsupported type", fill_from_a_list)
    refused(AttributeError, "no host buffer", lambda: d.ctypes)  # CuPy arrays have no ctypes either
    total = d.sum()
    assert isinstance(total, cp.ndarray) and float(total) == 3.0  # reductions stay on the device
    with pytest.raises(TypeError):
        range(total)  # a 0-d device array has no __index__
    assert isinstance(d + 1.0, cp.ndarray) and isinstance(np.exp(d), cp.ndarray)
    assert bool(d[0] < np.array(1.0))  # comparisons take a 0-d host array as a scalar
    np.testing.assert_array_equal(d[np.array([2, 0])].get(), [2.0, 0.0])  # host indices are allowed
    d[np.array([0, 1])] = np.array([5.0, 6.0])  # and host values through an advanced index
    np.testing.assert_array_equal(cp.tile(np.array([1.0]), 2).get(), [1.0, 1.0])  # tile takes host input
    np.testing.assert_array_equal(d.get(), [5.0, 6.0, 2.0])
    assert cp.get_array_module(d) is cp and cp.get_array_module(np.ones(2)) is np


def test_probe_cuda_path_matches_cpu(cuda_stand_in, stores, tmp_path, strata):
    on_gpu.test_probe_on_cuda_matches_cpu(stores, tmp_path, strata)


def test_probe_cuda_path_repeats_and_streams_bitwise(cuda_stand_in, stores, tmp_path, strata):
    on_gpu.test_probe_on_cuda_repeats_bitwise_and_streams_bitwise(stores, tmp_path, strata)


def test_compare_cuda_path_matches_cpu(cuda_stand_in, tiny_stores, tmp_path, strata):  # noqa: F811
    on_gpu.test_compare_on_cuda_matches_cpu(tiny_stores, tmp_path, strata)


def test_neurons_cuda_path_matches_cpu(cuda_stand_in, stores, tmp_path, strata):
    on_gpu.test_neurons_on_cuda_match_cpu(stores, tmp_path, strata)


def test_neurons_cuda_path_streams_bitwise(cuda_stand_in, stores, tmp_path, strata):
    on_gpu.test_neurons_on_cuda_stream_bitwise(stores, tmp_path, strata)


def test_estimator_cuda_path_in_a_pipeline(cuda_stand_in):
    on_gpu.test_estimator_on_cuda_in_a_pipeline()


CHECKS = sorted(name for name in vars(solver_on_gpu) if name.startswith("test_"))


@pytest.mark.parametrize("check", CHECKS)
def test_solver_cuda_path(cuda_stand_in, check):
    """test_probe_cupy.py's solver-level checks (batched, restricted, grouped passes, predict,
    the Lipschitz bound, the estimator), each against the NumPy run."""
    getattr(solver_on_gpu, check)()


def test_a_device_index_past_the_gpus_is_a_one_line_error(monkeypatch):
    from probe_engine.backend import array_module
    from store.errors import StrataError

    stand_in = install(monkeypatch)  # one device
    assert array_module("cuda:0") is stand_in
    with pytest.raises(StrataError, match=r"^--device: cuda:1 is out of range: this machine has 1 CUDA device$"):
        array_module("cuda:1")
