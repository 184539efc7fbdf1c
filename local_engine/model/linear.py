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

    # Up to this many rows (decode steps) a weight-only quantized twin, when
    # added, does the matmul: a small batch is bound by the bytes it streams.
    DECODE_MAX_ROWS = 16

    __slots__ = ("weight", "bias", "_packed", "_upcast_min_rows", "_decode")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, pack: bool | None = None) -> None:
        if pack is None:
            pack = can_pack_for_cpu(weight)
        self.bias = bias
        # One copy is kept: the packed weight (an opaque oneDNN tensor) or the plain one.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else None
        self.weight = None if pack else weight
        amx = "amx_bf16" in (cpu_flags() or ())
        self._upcast_min_rows = self.UPCAST_MIN_ROWS if pack and not amx else sys.maxsize
        self._decode: Int4Weight | Int8Weight | None = None

    def quantize_for_decode(self, kind: str) -> None:
        """Add an int4 (groups of 32) or int8 copy of the weight for small batches; bigger ones keep the exact path."""
        weight = self._packed.to_dense() if self._packed is not None else self.weight
        if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
            raise ValueError("weight-only quantization runs on the CPU, in bfloat16")
        if kind == "int4" and weight.shape[1] % Int4Weight.GROUP == 0:
            self._decode = Int4Weight(weight)
        elif kind in ("int4", "int8"):
            self._decode = Int8Weight(weight)
        else:
            raise ValueError(f"unknown quantization {kind!r}; expected 'int4' or 'int8'")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._decode is not None and x.shape[0] <= self.DECODE_MAX_ROWS:
            out = self._decode(x)
            return out if self.bias is None else out + self.bias
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


class Int4Weight:
    """Weight-only int4 with a scale and zero point per group of 32 inputs (torch's CPU kernel).

    A weight ``w`` [N, K] is stored as ``q`` in 0..15 with, per group,
    ``w ≈ (q - 8) * scale + zero``. Groups of 32 keep greedy SmolLM2 output
    identical to bfloat16 on the prompts measured; groups of 64 did not.
    """

    GROUP = 32

    def __init__(self, weight: torch.Tensor) -> None:
        rows, cols = weight.shape
        grouped = weight.float().reshape(rows, cols // self.GROUP, self.GROUP)
        low, high = grouped.amin(-1), grouped.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-6)
        levels = torch.round((grouped - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.reshape(rows, cols), 1)
        # The kernel wants [K / group, N, (scale, zero)] with zero = low + 8 * scale.
        self._scales_and_zeros = torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self._packed, self.GROUP, self._scales_and_zeros)


class Int8Weight:
    """Weight-only int8, symmetric, one scale per output channel (torch's CPU kernel)."""

    def __init__(self, weight: torch.Tensor) -> None:
        scale = weight.float().abs().amax(1).clamp(min=1e-8) / 127
        self._weight = torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self._scale = scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self._weight, self._scale)
