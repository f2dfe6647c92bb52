"""Which float precision to train and evaluate in, decided once, failing early on impossible requests."""

from __future__ import annotations

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def cpu_has_bf16() -> bool:
    """bf16 matrix instructions (AVX-512 BF16 or AMX) make bf16 ~1.5x faster than fp32 on a CPU."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    import torch

    if requested not in PRECISIONS:
        raise SystemExit(f"unknown precision {requested!r}; choose one of {PRECISIONS}")
    has_cuda = torch.cuda.is_available()
    if requested == "fp16" and not has_cuda:
        raise SystemExit("precision 'fp16' needs a CUDA GPU; use 'bf16', 'fp32' or 'auto' on a CPU")
    if requested == "auto":
        return "bf16" if (has_cuda and torch.cuda.is_bf16_supported()) or (not has_cuda and cpu_has_bf16()) else "fp32"
    return requested


def autocast(precision: str):
    """A context that runs matmuls in bf16/fp16 where asked, in fp32 otherwise."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
