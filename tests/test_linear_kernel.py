"""The oneDNN linear kernel: same numbers as torch's to float32 rounding, deterministic, recorded.

Stores are promised to be bitwise reproducible across processes, thread
counts and resumes, so the kernel must not depend on the thread count or on
the other rows of a batch; and a store made with one kernel must not be
resumed with the other (they differ in the last bits).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModel

from extractor import linear_kernel
from store.errors import StrataError

pytestmark = pytest.mark.skipif(not linear_kernel.onednn_available(), reason="this torch build has no oneDNN")


def _onednn(linear: torch.nn.Linear) -> torch.nn.Linear:
    fast = torch.nn.Linear(linear.in_features, linear.out_features)
    fast.load_state_dict(linear.state_dict())
    linear_kernel.use_kernel(fast, "onednn")
    return fast


@pytest.mark.parametrize("shape", [(1, 7, 48, 32), (3, 11, 32, 96), (37, 29, 96, 32)])
def test_matches_torch_linear(shape):
    batch, length, fan_in, fan_out = shape
    torch.manual_seed(0)
    ref = torch.nn.Linear(fan_in, fan_out)
    x = torch.randn(batch, length, fan_in)
    with torch.inference_mode():
        expected, got = ref(x), _onednn(ref)(x)
    assert type(_onednn(ref)).__name__ == "OneDNNLinear"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rows_and_threads_do_not_change_the_bits():
    torch.manual_seed(1)
    fast = _onednn(torch.nn.Linear(384, 1536))
    x = torch.randn(37, 29, 384)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = fast(x)
            alone = fast(x[:1].clone())
            torch.set_num_threads(2)
            two = fast(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(alone, one[:1])


def test_training_and_other_dtypes_take_torch_path():
    torch.manual_seed(2)
    ref = torch.nn.Linear(8, 4)
    fast = _onednn(ref)
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(fast.double()(x), ref.double()(x))
    y = torch.randn(3, 8, requires_grad=True)
    fast.float()(y).sum().backward()  # grad mode: torch's path, which has a backward
    assert y.grad is not None


def test_only_plain_linears_are_swapped(tiny_bert, tiny_gpt2):
    bert = AutoModel.from_pretrained(tiny_bert)
    plain = sum(type(m) is torch.nn.Linear for m in bert.modules())
    assert plain > 0 and linear_kernel.use_kernel(bert, "onednn") == plain
    assert linear_kernel.use_kernel(AutoModel.from_pretrained(tiny_bert), "torch") == 0
    # GPT-2's projections are Conv1D, not nn.Linear: they keep torch's kernel
    gpt2 = AutoModel.from_pretrained(tiny_gpt2)
    assert linear_kernel.use_kernel(gpt2, "onednn") == sum(type(m) is torch.nn.Linear for m in gpt2.modules())


def test_resolve():
    assert linear_kernel.resolve("auto", "cpu") == "onednn"
    assert linear_kernel.resolve("auto", "cuda") == "torch"
    assert linear_kernel.resolve("torch", "cpu") == "torch"
    with pytest.raises(StrataError, match=r"^--linear-kernel: onednn runs on the CPU only; use torch \(or auto\) "
                                          r"with --device cuda$"):
        linear_kernel.resolve("onednn", "cuda")


def test_store_records_kernel_and_refuses_the_other(strata, tiny_bert, text_corpus, tmp_path):
    stores = {}
    for kernel in ("onednn", "torch"):
        out = stores[kernel] = tmp_path / f"{kernel}.zarr"
        code, _, err = strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                              "--out", out, "--dtype", "float32", "--linear-kernel", kernel)
        assert code == 0, err
        attrs = zarr.open_group(out, mode="r").attrs["strata"]
        assert attrs["parameters"].get("linear_kernel") == (None if kernel == "torch" else kernel)
        assert attrs["provenance"]["linear_kernel"] == kernel
    a, b = (zarr.open_group(stores[k], mode="r")["activations"][...] for k in ("onednn", "torch"))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    code, _, err = strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                          "--out", stores["torch"], "--dtype", "float32")  # auto = onednn on CPU
    assert code == 1
    assert err.strip() == (f"strata extract: error: --out: {stores['torch']} was extracted with different "
                           "parameters (linear_kernel: store has 'torch', command has 'onednn'); use a new --out")
    # the other way round, the unrecorded default is named too (it said "command has None")
    code, _, err = strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                          "--out", stores["onednn"], "--dtype", "float32", "--linear-kernel", "torch")
    assert code == 1
    assert err.strip() == (f"strata extract: error: --out: {stores['onednn']} was extracted with different "
                           "parameters (linear_kernel: store has 'onednn', command has 'torch'); use a new --out")
