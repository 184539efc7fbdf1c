"""Weight-only int4/int8 twins for decode steps: close to bfloat16, and only for small batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from local_engine.model.linear import FrozenLinear, Int4Weight, Int8Weight, can_pack_for_cpu

pytestmark = pytest.mark.skipif(
    not can_pack_for_cpu(torch.zeros(1, dtype=torch.bfloat16)), reason="needs torch's CPU bfloat16 kernels"
)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize(("kind", "limit"), [(Int4Weight, 0.12), (Int8Weight, 0.02)])
def test_quantized_matmul_is_close(kind: type, limit: float) -> None:
    torch.manual_seed(0)
    weight = torch.randn(96, 128, dtype=torch.bfloat16)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    assert relative_error(kind(weight)(x), F.linear(x, weight)) < limit


def test_twin_serves_small_batches_only() -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 64, dtype=torch.bfloat16)
    bias = torch.randn(64, dtype=torch.bfloat16)
    exact = FrozenLinear(weight, bias)
    quantized = FrozenLinear(weight, bias)
    quantized.quantize_for_decode("int4")
    small = torch.randn(2, 64, dtype=torch.bfloat16)
    big = torch.randn(FrozenLinear.DECODE_MAX_ROWS + 1, 64, dtype=torch.bfloat16)
    assert not torch.equal(quantized(small), exact(small))
    assert relative_error(quantized(small), exact(small)) < 0.12
    assert torch.equal(quantized(big), exact(big))


def test_int4_falls_back_to_int8_when_groups_do_not_divide() -> None:
    linear = FrozenLinear(torch.randn(8, 48, dtype=torch.bfloat16))
    linear.quantize_for_decode("int4")
    assert isinstance(linear._decode, Int8Weight)
    with pytest.raises(ValueError):
        FrozenLinear(torch.randn(8, 64)).quantize_for_decode("int8")  # float32: not supported
