"""Where the engine runs, and in which float type.

``"auto"`` picks the fastest safe choice for the machine: CUDA when present,
bfloat16 where the hardware computes it natively, float32 otherwise.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# CPU flags that mean bfloat16 matmuls run in hardware rather than emulated.
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA device if there is one, else the CPU; otherwise ``spec`` itself."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``spec`` (``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"``) on ``device``."""
    if spec != "auto":
        try:
            return _DTYPES[spec]
        except KeyError:
            raise ValueError(f"unknown dtype {spec!r}; expected 'auto' or one of {sorted(_DTYPES)}") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``; None where it cannot be read (not Linux)."""
    try:
        return cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def cpuinfo_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX).

    Without ``/proc/cpuinfo``, oneDNN's own check stands in. It is not used
    on Linux because it also says yes for plain AVX-512, where bfloat16 is
    emulated.
    """
    flags = cpu_flags()
    if flags is None:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return not _NATIVE_BF16_FLAGS.isdisjoint(flags)
