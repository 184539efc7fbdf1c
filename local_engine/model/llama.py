"""The Llama family's forward pass over the paged KV cache.

Covers Llama (1-3, including "llama3" rope scaling), Mistral, SmolLM2,
Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm): a pre-norm decoder
with rotary positions, grouped-query attention and a SiLU-gated MLP.

Weights come from a loaded transformers model and are re-packed for speed::

    q_proj, k_proj, v_proj  ->  qkv      [(H + 2 * KVH) * D, hidden]   one matmul
    gate_proj, up_proj      ->  gate_up  [2 * intermediate, hidden]    one matmul

The batch is flat ([num_tokens, hidden]); which sequence a row belongs to is
the attention metadata's business, and which LoRA adapter it runs through the
step's ``LoraBatch`` (local_engine/lora.py), which adds each adapter's delta to
the fused matmuls' outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import AttentionMetadata, paged_attention
from ..kv_cache import KVCache, LayerKV
from .linear import FrozenLinear, recording_inputs

if TYPE_CHECKING:
    from ..lora import LoraBatch

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Rope types whose frequencies change with the sequence length; a static cos/sin table cannot express them.
_DYNAMIC_ROPE_TYPES = frozenset({"dynamic", "longrope"})


def _converted(tensors: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``tensors`` stacked on dim 0; a lone tensor already in place is shared, not copied."""
    tensor = tensors[0].detach() if len(tensors) == 1 else torch.cat([t.detach() for t in tensors])
    return tensor.to(device=device, dtype=dtype).contiguous()


def _frozen(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    return nn.Parameter(_converted([tensor], dtype, device), requires_grad=False)


def _fused_linear(
    linears: list[nn.Linear], dtype: torch.dtype, device: torch.device, pack: bool | None
) -> FrozenLinear:
    """One linear layer computing ``linears``' outputs side by side (their weights stacked on dim 0)."""
    biases = [getattr(linear, "bias", None) for linear in linears]
    bias = None
    if any(b is not None for b in biases):
        if not all(b is not None for b in biases):
            raise ValueError("some but not all of the fused projections have a bias")
        bias = _converted(biases, dtype, device)
    return FrozenLinear(_converted([linear.weight for linear in linears], dtype, device), bias, pack=pack)


class RotaryTable(nn.Module):
    """cos/sin for every position, computed once in float32.

    Rotating the two halves of a head (the "rotate_half" form)::

        x = [x1 | x2]     out = x * cos + [x2 | x1] * sin_signed
        cos = [cos | cos] sin_signed = [-sin | sin]

    so a layer spends one roll and one fused multiply-add per rotation.
    """

    def __init__(
        self, inv_freq: torch.Tensor, scaling: float, max_positions: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq.float().cpu())
        cos, sin = freqs.cos() * scaling, freqs.sin() * scaling
        self.register_buffer("cos", torch.cat([cos, cos], -1).to(device=device, dtype=dtype), persistent=False)
        self.register_buffer("sin", torch.cat([-sin, sin], -1).to(device=device, dtype=dtype), persistent=False)

    def lookup(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``positions`` shaped [T, 1, D], to broadcast over heads."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [T, heads, D] by the table rows ``cos``/``sin`` [T, 1, D]."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


class DecoderLayer(nn.Module):
    def __init__(
        self, hf_layer: nn.Module, config: Any, dtype: torch.dtype, device: torch.device, pack: bool | None,
        index: int = 0,
    ) -> None:
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.index = index  # its place in the stack: which of a LoRA adapter's layers applies here
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.hidden_size = config.hidden_size
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.input_norm = _frozen(hf_layer.input_layernorm.weight, dtype, device)
        self.post_attention_norm = _frozen(hf_layer.post_attention_layernorm.weight, dtype, device)
        self.qkv = _fused_linear([attn.q_proj, attn.k_proj, attn.v_proj], dtype, device, pack)
        self.o_proj = _fused_linear([attn.o_proj], dtype, device, pack)
        self.gate_up = _fused_linear([mlp.gate_proj, mlp.up_proj], dtype, device, pack)
        self.down = _fused_linear([mlp.down_proj], dtype, device, pack)
        # Qwen3 normalises each q and k head before the rotation; q and k heads
        # sit side by side, so one table [H + KVH, D] of weights covers both.
        self.qk_norm: nn.Parameter | None = None
        if getattr(attn, "q_norm", None) is not None:
            q_norm = attn.q_norm.weight.detach().expand(self.num_heads, -1)
            k_norm = attn.k_norm.weight.detach().expand(self.num_kv_heads, -1)
            self.qk_norm = _frozen(torch.cat([q_norm, k_norm]), dtype, device)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        metadata: AttentionMetadata,
        cache: LayerKV,
        lora: LoraBatch | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pre-norm block. ``hidden`` is the previous block's output, not yet added to ``residual``."""
        residual = hidden if residual is None else hidden + residual
        hidden = F.rms_norm(residual, (self.hidden_size,), self.input_norm, self.eps)

        num_tokens = hidden.shape[0]
        num_heads, num_kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self._matmul("qkv", hidden, lora).view(num_tokens, num_heads + 2 * num_kv_heads, head_dim)
        qk = qkv[:, : num_heads + num_kv_heads]
        if self.qk_norm is not None:
            qk = F.rms_norm(qk, (head_dim,), None, self.eps) * self.qk_norm
        qk = apply_rotary(qk, cos, sin)
        attn = paged_attention(
            qk[:, :num_heads], qk[:, num_heads:], qkv[:, num_heads + num_kv_heads :], cache, metadata, self.scale
        )
        hidden = self._matmul("o_proj", attn.reshape(num_tokens, num_heads * head_dim), lora)

        residual = hidden + residual
        hidden = F.rms_norm(residual, (self.hidden_size,), self.post_attention_norm, self.eps)
        gate, up = self._matmul("gate_up", hidden, lora).chunk(2, dim=-1)
        return self._matmul("down", F.silu(gate) * up, lora), residual

    def _matmul(self, name: str, x: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        """The fused linear ``name`` on ``x``, with the step's LoRA deltas on their rows."""
        out = getattr(self, name)(x)
        return out if lora is None else lora.add_delta(self.index, name, x, out)


class LlamaForCausalLM(nn.Module):
    """Embedding, decoder layers over the paged cache, final norm; the LM head only on rows asked for."""

    def __init__(self, hf_model: nn.Module, dtype: torch.dtype, device: torch.device, pack: bool | None = None) -> None:
        super().__init__()
        config = hf_model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model type {model_type!r} is not supported; expected one of {sorted(SUPPORTED_MODEL_TYPES)}"
            )
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"activation {config.hidden_act!r} is not supported; expected 'silu'")
        self.dtype = dtype
        self.device = device
        self.model_type = model_type
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = _head_dim(config)
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.max_position_embeddings = config.max_position_embeddings
        self.sliding_window = _sliding_window(config)
        self.eps = config.rms_norm_eps

        decoder = hf_model.model
        self.embed_tokens = _frozen(decoder.embed_tokens.weight, dtype, device)
        self.layers = nn.ModuleList(
            DecoderLayer(layer, config, dtype, device, pack, index) for index, layer in enumerate(decoder.layers)
        )
        self.norm = _frozen(decoder.norm.weight, dtype, device)
        # Tied embeddings (SmolLM2) share one tensor, unless the head is packed for the CPU: then it has its own copy.
        self.lm_head = _fused_linear([hf_model.get_output_embeddings()], dtype, device, pack)
        self.rotary = _rotary_table(decoder.rotary_emb, config, dtype, device)

    @classmethod
    def from_transformers(
        cls, hf_model: nn.Module, dtype: torch.dtype, device: torch.device, *, pack: bool | None = None
    ) -> LlamaForCausalLM:
        """Copy (and fuse) a transformers ``*ForCausalLM``'s weights; the caller may drop ``hf_model`` after.

        ``pack``: store matmul weights in oneDNN's layout (default: wherever the device allows, see FrozenLinear).
        """
        with torch.no_grad():
            return cls(hf_model, dtype, device, pack)

    def quantize(self, kind: str, calibration_ids: torch.Tensor | None = None) -> None:
        """Quantized twins of the matmul weights (``kind``: see linear.QUANTIZED_KINDS).

        "int4" / "int8" are weight-only, for small batches: a batch-1 decode
        step streams every weight once, so it runs about as fast as its bytes
        allow, and int4 cuts them by four; the LM head is then int8. "w8a8"
        multiplies int8 activations by int8 weights at every batch size; it
        first reads ``calibration_ids`` (one sequence of token ids), when
        given, to learn each matmul's input range. The exact weights stay for
        what a twin does not serve.
        """
        if kind == "w8a8" and calibration_ids is not None:
            self._record_input_ranges(calibration_ids)
        for linear in self._matmuls():
            linear.quantize(kind)
        self.lm_head.quantize("int8" if kind == "int4" else kind)

    def _matmuls(self) -> list[FrozenLinear]:
        """The decoder layers' matmuls (not the LM head)."""
        return [linear for layer in self.layers for linear in (layer.qkv, layer.o_proj, layer.gate_up, layer.down)]

    @torch.inference_mode()
    def _record_input_ranges(self, token_ids: torch.Tensor) -> None:
        """Run ``token_ids`` as one prompt; each matmul keeps its inputs' per-channel maxima."""
        block_size = 16
        num_tokens = len(token_ids)
        num_blocks = -(-num_tokens // block_size)
        cache = KVCache(
            self.num_layers, num_blocks, block_size, self.num_kv_heads, self.head_dim, self.dtype, self.device
        )
        metadata = AttentionMetadata.build([num_tokens], [num_tokens], [range(num_blocks)], block_size, self.device)
        with recording_inputs([*self._matmuls(), self.lm_head]):
            self.compute_logits(self(token_ids.to(self.device), metadata.positions, metadata, cache))

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata, kv_cache: KVCache,
        lora: LoraBatch | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [num_tokens, hidden] for the flat batch ``input_ids`` [num_tokens]."""
        hidden = F.embedding(input_ids, self.embed_tokens)
        cos, sin = self.rotary.lookup(positions)
        residual = None
        for layer, cache in zip(self.layers, kv_cache.layers):
            hidden, residual = layer(hidden, residual, cos, sin, metadata, cache, lora)
        return F.rms_norm(hidden + residual, (self.hidden_size,), self.norm, self.eps)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits [n, vocab] for the rows of ``hidden`` that are sampled."""
        return self.lm_head(hidden).float()


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _sliding_window(config: Any) -> int | None:
    """The attention window, if any layer uses one.

    The engine attends over the whole context; that is exact as long as a
    sequence never outgrows the window, so the loader caps its length there.
    """
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _rotary_table(hf_rotary: nn.Module, config: Any, dtype: torch.dtype, device: torch.device) -> RotaryTable:
    """The cos/sin table for ``config``'s rope, llama3/linear/yarn scaling included.

    The frequencies come from a fresh instance of the model's own rotary
    class: its buffers are not saved in checkpoints, so the loaded instance's
    may not have been computed, while a new one computes them from the config.
    """
    fresh = type(hf_rotary)(config)
    rope_type = getattr(fresh, "rope_type", "default")
    if rope_type in _DYNAMIC_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported")
    return RotaryTable(fresh.inv_freq, float(fresh.attention_scaling), config.max_position_embeddings, dtype, device)
