"""Which kernel runs the model's ``nn.Linear`` layers on CPU: torch's default or oneDNN.

Why this module exists: torch's CPU wheels run ``nn.Linear`` as an MKL sgemm,
and MKL takes its AVX2 code path on AMD processors, while oneDNN (shipped in the
same wheel) uses AVX-512 wherever the CPU has it.  On this project's machine (a
2-core AMD EPYC with AVX-512) the MiniLM forward pass went from 118.7 to 64.3 ms
per 32 x 32-token batch; the linear layers from about 190 to 430 GFLOP/s.

``torch.ops.mkldnn._linear_pointwise`` is the op torch's own compiler
(inductor) emits for linear layers on CPU; torch has no public eager API for it,
which is why strata calls it by hand.  Its results are the same float32
products summed in another order: within about 1e-5 of torch's default, and,
like it, deterministic, independent of the thread count and of the other rows
of the batch (tests/test_linear_kernel.py), so stores stay bitwise reproducible
across processes and resumes.  The kernel changes the stored bytes in the last
bit, so it is one of a store's parameters: a resume must use the same kernel.
"""

from __future__ import annotations

from functools import cache

from store.errors import StrataError

#: ``--linear-kernel`` choices; ``auto`` = oneDNN on CPU where torch has it, else torch.
#: (torch is imported on use, so the ``strata`` parser starts without it.)
KERNELS = ("auto", "onednn", "torch")

#: Rows oneDNN is told to expect when it lays out a weight (a typical token-budget batch).
PACK_ROWS = 1024


def onednn_available() -> bool:
    import torch

    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


@cache
def onednn_linear_class():
    """``nn.Linear`` whose float32 CPU inference forward is oneDNN's; anything else takes torch's path."""
    import torch

    class OneDNNLinear(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32 \
                    or torch.is_grad_enabled():
                return super().forward(x)
            return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")

        def _packed_weight(self) -> torch.Tensor:
            """The weight reordered once into oneDNN's blocked layout (10-18% faster GEMMs than
            reordering on every call); an extra copy of the weight, made on the first forward,
            after any change a --variant made.  The layout is fixed (PACK_ROWS), so bits are too."""
            packed = self.__dict__.get("_onednn_weight")
            if packed is None:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), PACK_ROWS)
                self.__dict__["_onednn_weight"] = packed
            return packed

    return OneDNNLinear


def resolve(kernel: str, device: str) -> str:
    """The kernel a run will use: ``auto`` becomes ``onednn`` on CPU when available."""
    if kernel not in KERNELS:
        raise StrataError(f"--linear-kernel: choose from {', '.join(KERNELS)}, got {kernel!r}")
    on_cpu = device == "cpu"
    if kernel == "auto":
        return "onednn" if on_cpu and onednn_available() else "torch"
    if kernel == "onednn" and not on_cpu:
        raise StrataError("--linear-kernel: onednn runs on the CPU only; use torch (or auto) with --device cuda")
    if kernel == "onednn" and not onednn_available():
        raise StrataError("--linear-kernel: this torch build has no oneDNN (mkldnn); use torch")
    return kernel


def use_kernel(model, kernel: str) -> int:
    """Route every plain ``nn.Linear`` of ``model`` through ``kernel``; return how many.

    The class is swapped in place (weights, hooks and ``isinstance`` untouched).
    Subclasses of ``nn.Linear`` with their own forward, and GPT-2's ``Conv1D``,
    keep torch's path.
    """
    import torch

    if kernel != "onednn":
        return 0
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = onednn_linear_class()
            swapped += 1
    return swapped
