"""Quantized twins of the matmul weights: close to the exact matmul, and used only for the batches they serve."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from local_engine.model.linear import (
    WEIGHT_ONLY_MAX_ROWS,
    DynamicInt8,
    FrozenLinear,
    Int4Weight,
    Int8Weight,
    can_pack_for_cpu,
    recording_inputs,
)

pytestmark = pytest.mark.skipif(
    not can_pack_for_cpu(torch.zeros(1, dtype=torch.bfloat16)), reason="needs torch's CPU bfloat16 kernels"
)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize(("kind", "limit"), [(Int4Weight, 0.12), (Int8Weight, 0.02), (DynamicInt8, 0.03)])
def test_quantized_matmul_is_close(kind: type, limit: float) -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 128, dtype=torch.bfloat16)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    got = kind(weight)(x)
    assert got.dtype == torch.bfloat16
    assert relative_error(got, F.linear(x, weight)) < limit


def test_dynamic_int8_scales_each_row_on_its_own() -> None:
    # A row 1000x bigger than the others must not take the others' precision with it.
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    x = torch.randn(2, 128)
    x[0] *= 1000
    got, want = DynamicInt8(weight)(x), F.linear(x, weight)
    assert relative_error(got[1:], want[1:]) < 0.03


def exact_and_quantized(kind: str) -> tuple[FrozenLinear, FrozenLinear]:
    """The same 64x64 bfloat16 layer (with a bias) twice, the second with a ``kind`` twin."""
    torch.manual_seed(0)
    weight = torch.randn(64, 64, dtype=torch.bfloat16)
    bias = torch.randn(64, dtype=torch.bfloat16)
    quantized = FrozenLinear(weight, bias)
    quantized.quantize(kind)
    return FrozenLinear(weight, bias), quantized


def test_weight_only_twin_serves_small_batches_only() -> None:
    exact, quantized = exact_and_quantized("int4")
    small = torch.randn(2, 64, dtype=torch.bfloat16)
    big = torch.randn(WEIGHT_ONLY_MAX_ROWS + 1, 64, dtype=torch.bfloat16)
    assert not torch.equal(quantized(small), exact(small))
    assert relative_error(quantized(small), exact(small)) < 0.12
    assert torch.equal(quantized(big), exact(big))


def test_w8a8_twin_serves_every_batch() -> None:
    exact, quantized = exact_and_quantized("w8a8")
    for rows in (1, WEIGHT_ONLY_MAX_ROWS + 1, FrozenLinear.UPCAST_MIN_ROWS + 1):
        x = torch.randn(rows, 64, dtype=torch.bfloat16)
        assert not torch.equal(quantized(x), exact(x))
        assert relative_error(quantized(x), exact(x)) < 0.03


def test_kinds_and_dtypes() -> None:
    linear = FrozenLinear(torch.randn(8, 48, dtype=torch.bfloat16))
    linear.quantize("int4")
    assert isinstance(linear._quantized, Int8Weight)  # int4's groups of 32 do not divide 48
    with pytest.raises(ValueError, match="bfloat16"):
        FrozenLinear(torch.randn(8, 64)).quantize("int8")  # weight-only kernels take bfloat16 only
    with pytest.raises(ValueError, match="unknown quantization"):
        FrozenLinear(torch.randn(8, 64)).quantize("fp8")
    float32 = FrozenLinear(torch.randn(8, 64))
    float32.quantize("w8a8")
    x = torch.randn(3, 64)
    assert float32(x).dtype == torch.float32


def test_recorded_input_ranges_smooth_out_outlier_channels() -> None:
    # LLM activations put most of their range in a few channels; one int8
    # scale per token then wastes its levels on them. Smoothing with the
    # recorded per-channel maxima must recover the precision.
    torch.manual_seed(0)
    weight = torch.randn(64, 128, dtype=torch.bfloat16)
    x = torch.randn(16, 128)
    x[:, :4] *= 60
    x = x.to(torch.bfloat16)
    linear = FrozenLinear(weight)
    with recording_inputs([linear]):
        linear(x[:8])
        linear(x[8:])
    assert type(linear) is FrozenLinear
    assert torch.equal(linear.input_absmax, x.float().abs().amax(0))
    want = F.linear(x, weight)
    plain = relative_error(DynamicInt8(weight)(x), want)
    smoothed = relative_error(DynamicInt8(weight, linear.input_absmax)(x), want)
    assert smoothed < plain / 2, (smoothed, plain)
