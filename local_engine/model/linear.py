"""Matmuls by frozen weights, stored the way the device multiplies them fastest."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

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

    __slots__ = ("weight", "bias", "_packed", "_upcast_min_rows", "_quantized", "input_absmax")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, pack: bool | None = None) -> None:
        if pack is None:
            pack = can_pack_for_cpu(weight)
        self.bias = bias
        # One copy is kept: the packed weight (an opaque oneDNN tensor) or the plain one.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if pack else None
        self.weight = None if pack else weight
        amx = "amx_bf16" in (cpu_flags() or ())
        self._upcast_min_rows = self.UPCAST_MIN_ROWS if pack and not amx else sys.maxsize
        self._quantized: QuantizedWeight | None = None
        # Largest |input| per input channel seen while recording (see recording_inputs); used by "w8a8".
        self.input_absmax: torch.Tensor | None = None

    def quantize(self, kind: str) -> None:
        """Add a quantized twin of the weight (see QUANTIZED_KINDS); it serves batches up to its ``max_rows``."""
        weight = self._packed.to_dense() if self._packed is not None else self.weight
        if weight.device.type != "cpu":
            raise ValueError("quantization runs on the CPU")
        if kind == "int4" and weight.shape[1] % Int4Weight.GROUP != 0:
            kind = "int8"  # int4's groups must divide the input size
        if kind not in QUANTIZED_KINDS:
            raise ValueError(f"unknown quantization {kind!r}; expected one of {sorted(QUANTIZED_KINDS)}")
        if kind == "w8a8":
            self._quantized = DynamicInt8(weight, self.input_absmax)
        else:
            self._quantized = QUANTIZED_KINDS[kind](weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        quantized = self._quantized
        if quantized is not None and x.shape[0] <= quantized.max_rows:
            out = quantized(x)
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


class _RecordingLinear(FrozenLinear):
    """A FrozenLinear that also keeps the largest |input| per channel (same slots, so instances can switch class)."""

    __slots__ = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        absmax = x.detach().abs().amax(0).float()
        self.input_absmax = absmax if self.input_absmax is None else torch.maximum(self.input_absmax, absmax)
        return super().__call__(x)


@contextmanager
def recording_inputs(linears: Iterable[FrozenLinear]) -> Iterator[None]:
    """Within the block, ``linears`` record their inputs' per-channel maxima in ``input_absmax``."""
    linears = list(linears)
    for linear in linears:
        linear.__class__ = _RecordingLinear
    try:
        yield
    finally:
        for linear in linears:
            linear.__class__ = FrozenLinear


def can_pack_for_cpu(weight: torch.Tensor) -> bool:
    """Whether packing pays off for ``weight``: bfloat16 on a CPU build of torch with oneDNN."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except RuntimeError:  # an op namespace without the op
        return False


class QuantizedWeight(Protocol):
    """A quantized copy of a weight [N, K]: ``x [M, K] -> x @ weight.T`` in ``x``'s dtype."""

    max_rows: int  # the largest batch it serves; bigger ones use the exact weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


# A batch of a few rows only streams the weights, so weight-only twins pay
# off up to this many rows; beyond, the matmul is compute-bound and their
# kernels (which widen to bfloat16 before multiplying) are no faster.
WEIGHT_ONLY_MAX_ROWS = 16


class Int4Weight:
    """Weight-only int4 with a scale and zero point per group of 32 inputs (torch's CPU kernel).

    A weight ``w`` [N, K] is stored as ``q`` in 0..15 with, per group,
    ``w ≈ (q - 8) * scale + zero``. Groups of 32 keep greedy SmolLM2 output
    identical to bfloat16 on the prompts measured; groups of 64 did not.
    """

    GROUP = 32
    max_rows = WEIGHT_ONLY_MAX_ROWS

    def __init__(self, weight: torch.Tensor) -> None:
        _require_bfloat16(weight, "int4")
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

    max_rows = WEIGHT_ONLY_MAX_ROWS

    def __init__(self, weight: torch.Tensor) -> None:
        _require_bfloat16(weight, "int8")
        self._weight, scale = _int8_per_row(weight)
        self._scale = scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self._weight, self._scale)


class DynamicInt8:
    """int8 weights and int8 activations ("W8A8"): the matmul itself runs on integers.

    Each call quantizes ``x`` per row (one scale per token, so one outlier
    token does not coarsen the others), multiplies int8 by int8 into int32
    (``torch._int_mm``: VNNI dot products on x86, four int8 products per lane
    where bfloat16 has two) and scales the result back. Being compute-side,
    it serves every batch size, prefill chunks included.

    A few input channels carry most of an LLM's activation range, and one
    scale per token spends the int8 levels on them. Given those channels'
    recorded maxima (``input_absmax``), the range is shared out between
    activations and weights as SmoothQuant does (alpha 0.5)::

        x @ W.T = (x / s) @ (W * s).T      s_j = sqrt(max|x_j| / max|W_:,j|)

    On SmolLM2 that halves the KL divergence from the exact model (bench/perplexity.py).
    """

    max_rows = sys.maxsize

    def __init__(self, weight: torch.Tensor, input_absmax: torch.Tensor | None = None) -> None:
        self._inverse_smoothing: torch.Tensor | None = None
        if input_absmax is not None:
            weight_absmax = weight.float().abs().amax(0).clamp(min=1e-5)
            smoothing = (input_absmax.to(weight.device).clamp(min=1e-5) / weight_absmax).sqrt()
            weight = weight.float() * smoothing
            self._inverse_smoothing = smoothing.reciprocal()
        weight_int8, scale = _int8_per_row(weight)
        self._weight_t = weight_int8.t()  # [K, N], column-major: the layout _int_mm reads fastest
        self._scale = scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self._inverse_smoothing is not None:
            x = x * self._inverse_smoothing  # float32 from here: the smoothed range may not fit bfloat16's precision
        x_scale = x.abs().amax(-1, keepdim=True).float().clamp_(min=1e-8).div_(127)
        x_int8 = (x / x_scale).round_().to(torch.int8)
        out = torch._int_mm(x_int8, self._weight_t) * x_scale
        return out.mul_(self._scale).to(dtype)


QUANTIZED_KINDS: dict[str, type[QuantizedWeight]] = {"int4": Int4Weight, "int8": Int8Weight, "w8a8": DynamicInt8}


def _int8_per_row(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one float32 scale per output row: ``weight ≈ q * scale[:, None]``."""
    scale = weight.float().abs().amax(1).clamp(min=1e-8) / 127
    return torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale


def _require_bfloat16(weight: torch.Tensor, kind: str) -> None:
    if weight.dtype != torch.bfloat16:
        raise ValueError(f"{kind} weight-only quantization needs bfloat16 weights, not {weight.dtype}")
