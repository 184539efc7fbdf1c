"""Matmuls by frozen weights, stored the way the device multiplies them fastest."""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ..device import cpu_flags


class FrozenLinear:
    """``x @ weight.T + bias`` with the weight stored the way the device multiplies it fastest.

    On x86 CPUs oneDNN computes bfloat16 matmuls in a blocked weight layout,
    and ``F.linear`` re-blocks the plain weight on every call. Packing it
    once at load time makes small-batch bfloat16 matmuls (which only stream
    the weights) 1.4-2x faster. float32 stays plain: MKL's sgemm already runs
    at memory bandwidth, and packing measured no better. Elsewhere
    ``F.linear`` picks the device's kernel (cuBLAS on CUDA).

    Big bfloat16 batches (a prefill chunk) are compute-bound, and without AMX
    oneDNN's bfloat16 kernels run at about half float32's speed, so from
    ``UPCAST_MIN_ROWS`` rows the weight is widened to float32 for the call:
    a 512-token prefill runs ~1.3x faster. The rounding matches: both
    accumulate in float32 and round the output to bfloat16.
    """

    UPCAST_MIN_ROWS = 256  # measured crossover, SmolLM2 on a 2-core AVX512-BF16 VM

    __slots__ = ("weight", "bias", "_packed", "_upcast_min_rows")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, pack: bool | None = None) -> None:
        if pack is None:
            pack = can_pack_for_cpu(weight)
        self.bias = bias
        # One copy is kept: the packed weight (an opaque oneDNN tensor) or the plain one.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else None
        self.weight = None if pack else weight
        amx = "amx_bf16" in (cpu_flags() or ())
        self._upcast_min_rows = self.UPCAST_MIN_ROWS if pack and not amx else sys.maxsize

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        if x.shape[0] >= self._upcast_min_rows:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), packed.to_dense().float(), bias).to(x.dtype)
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")

    @property
    def out_features(self) -> int:
        return (self._packed if self._packed is not None else self.weight).shape[0]


def can_pack_for_cpu(weight: torch.Tensor) -> bool:
    """Whether packing pays off for ``weight``: bfloat16 on a CPU build of torch with oneDNN."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except RuntimeError:  # an op namespace without the op
        return False
