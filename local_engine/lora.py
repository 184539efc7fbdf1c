"""LoRA adapters over the base model: PEFT directories read and checked, and their deltas applied per row.

A LoRA adapter adds a low-rank term to some of the model's linear layers::

    y = x W^T + scale * (x A^T) B^T        A [r, in], B [out, r], scale = lora_alpha / r (or / sqrt(r): rsLoRA)

The engine fuses q/k/v and gate/up into one matmul each (model/llama.py), so
an adapter is stored per fused layer: the A of each projection it targets
stacked (they all read the same ``x``), and one B that puts each
projection's output in its own rows, zero elsewhere, with ``scale`` folded in::

    q, v targeted, rank r             A_fused = [A_q; A_v]          [2r, hidden]
    qkv rows  [ q (H*D) | k | v ]     B_fused = [ B_q  0  ]  q rows  [(H + 2*KVH) * D, 2r]
                                                [  0   0  ]  k rows
                                                [  0  B_v ]  v rows

In a step, rows of several adapters and of none share the batch. Each fused
layer runs its base matmul for every row, then each adapter in the step adds
its delta to its own rows (``LoraBatch``): one gather, two small matmuls and
one scatter-add per adapter and layer, never a loop over tokens. A step with
one adapter on every row skips the gather and the scatter.

``read_adapter`` checks a PEFT directory against the base model before
anything is kept: the files, the config's fields, every tensor's module,
layer and shape, the rank against the configured maximum; the first problem
is an ``InvalidLoraAdapter`` naming it, and nothing is changed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open  # transformers' dependency: installed with the engine

from .errors import InvalidLoraAdapter, LoraLimitReached, LoraNotLoaded
from .model import LlamaForCausalLM

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# The engine's fused layers, and the projections (PEFT's target_modules names) each one computes, in row order.
FUSED_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
PROJECTIONS = frozenset(name for names in FUSED_PROJECTIONS.values() for name in names)
_FUSED_OF = {projection: fused for fused, names in FUSED_PROJECTIONS.items() for projection in names}
# PEFT's key for a causal LM: base_model.model.model.layers.<N>.<self_attn|mlp>.<projection>.lora_<A|B>.weight
_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
# Fields of adapter_config.json whose non-default values change what the weights mean, and are not served.
# (Fields that only shape training or initialisation, such as loftq_config or eva_config, are not read.)
_UNSERVED_FIELDS: dict[str, Any] = {
    "use_dora": False, "bias": "none", "lora_bias": False, "modules_to_save": None, "rank_pattern": {},
    "alpha_pattern": {}, "layer_replication": None, "megatron_config": None, "trainable_token_indices": None,
    "alora_invocation_tokens": None, "use_qalora": False, "target_parameters": None, "arrow_config": None,
    "use_bdlora": None,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class LoraPair:
    """One fused layer's low-rank pair: ``delta = (x @ a.T) @ b.T``, the scale folded into ``b``."""

    a: torch.Tensor  # [R, in]: the A of each targeted projection, stacked
    b: torch.Tensor  # [out, R]


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """An adapter checked against the base model, its tensors on the model's device and in its dtype."""

    name: str
    path: str
    rank: int
    scale: float
    target_modules: frozenset[str]
    layers: tuple[Mapping[str, LoraPair], ...]  # per decoder layer: fused layer name -> its pair (absent: untargeted)
    # Prefix-cache salt (Sequence.cache_salt): unique in the process, never reused after an unload, so two
    # adapters (or one reloaded from other files) never share cached KV blocks, and none shares the base model's.
    adapter_id: int


def read_adapter(
    path: str | Path, name: str, model: LlamaForCausalLM, *, max_rank: int, adapter_id: int
) -> LoraAdapter:
    """Read the PEFT adapter at ``path`` for ``model``; InvalidLoraAdapter naming the first problem."""
    directory = Path(path)
    if not directory.is_dir():
        raise InvalidLoraAdapter(f"The LoRA adapter directory {str(path)!r} does not exist.", param="lora_path")
    config = _read_config(directory / CONFIG_FILE)
    rank, scale = _rank_and_scale(config, max_rank)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        found = " (adapter_model.bin is not read: save with safe_serialization)" if (directory / "adapter_model.bin").exists() else ""
        raise InvalidLoraAdapter(f"The LoRA adapter has no {WEIGHTS_FILE}{found}.", param="lora_path")
    shapes = projection_shapes(model)
    targets = _config_targets(config)
    found_pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as tensors:
            keys = tensors.keys()  # a safe_open handle is not iterable
            for key in keys:
                layer, projection, half = _parse_key(key, model.num_layers)
                tensor = tensors.get_tensor(key)
                out_features, in_features = shapes[projection]
                expected = (rank, in_features) if half == "A" else (out_features, rank)
                if tuple(tensor.shape) != expected:
                    raise InvalidLoraAdapter(
                        f"The LoRA adapter's {key} has shape {list(tensor.shape)}; the base model's {projection} "
                        f"at rank {rank} takes {list(expected)}.", param="lora_path",
                    )  # fmt: skip
                found_pairs.setdefault((layer, projection), {})[half] = tensor
    except InvalidLoraAdapter:
        raise
    except Exception as error:  # not a safetensors file, a truncated one
        raise InvalidLoraAdapter(f"The LoRA adapter's {WEIGHTS_FILE} cannot be read: {error}", param="lora_path") from None
    if not found_pairs:
        raise InvalidLoraAdapter(f"The LoRA adapter's {WEIGHTS_FILE} holds no LoRA weights.", param="lora_path")
    for (layer, projection), halves in found_pairs.items():
        if set(halves) != {"A", "B"}:
            missing = ({"A", "B"} - set(halves)).pop()
            raise InvalidLoraAdapter(
                f"The LoRA adapter has no lora_{missing} for layer {layer}'s {projection}.", param="lora_path"
            )
        if targets is not None and projection not in targets:
            raise InvalidLoraAdapter(
                f"The LoRA adapter has weights for {projection}, which its target_modules do not name.", param="lora_path"
            )
    layers = tuple(
        _fused_pairs(found_pairs, layer, shapes, scale, model.dtype, model.device) for layer in range(model.num_layers)
    )
    targeted = frozenset(projection for _, projection in found_pairs)
    return LoraAdapter(name, str(path), rank, scale, targeted, layers, adapter_id)


def projection_shapes(model: LlamaForCausalLM) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of each projection PEFT can target, as the base model has them."""
    hidden, q_out, kv_out = model.hidden_size, model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    intermediate = model.layers[0].gate_up.out_features // 2
    return {
        "q_proj": (q_out, hidden), "k_proj": (kv_out, hidden), "v_proj": (kv_out, hidden), "o_proj": (hidden, q_out),
        "gate_proj": (intermediate, hidden), "up_proj": (intermediate, hidden), "down_proj": (hidden, intermediate),
    }  # fmt: skip


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidLoraAdapter(f"The LoRA adapter has no {CONFIG_FILE}.", param="lora_path")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidLoraAdapter(f"The LoRA adapter's {CONFIG_FILE} cannot be read: {error}", param="lora_path") from None
    if not isinstance(config, dict):
        raise InvalidLoraAdapter(f"The LoRA adapter's {CONFIG_FILE} is not a JSON object.", param="lora_path")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise InvalidLoraAdapter(f"The adapter is {peft_type!r}, not a LoRA adapter (peft_type).", param="lora_path")
    for field, default in _UNSERVED_FIELDS.items():
        value = config.get(field, default)
        if value != default and (default or value):  # an empty value ({}, [], None) is the default's
            raise InvalidLoraAdapter(
                f"The LoRA adapter's {field} is {value!r}: the engine serves plain LoRA only ({field}: {default!r}).",
                param="lora_path",
            )
    return config


def _rank_and_scale(config: Mapping[str, Any], max_rank: int) -> tuple[int, float]:
    rank, alpha = config.get("r"), config.get("lora_alpha", 8)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidLoraAdapter(f"The LoRA adapter's rank r must be a positive integer, got {rank!r}.", param="lora_path")
    if rank > max_rank:
        raise InvalidLoraAdapter(
            f"The LoRA adapter's rank r is {rank}; this engine takes at most {max_rank} (max_lora_rank).",
            param="lora_path",
        )
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise InvalidLoraAdapter(f"The LoRA adapter's lora_alpha must be a number, got {alpha!r}.", param="lora_path")
    # As PEFT: rsLoRA scales by alpha / sqrt(r). fan_in_fan_out only concerns GPT-2's Conv1D, and PEFT
    # itself ignores it on a Linear layer, as every Llama-family projection is.
    return rank, float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _config_targets(config: Mapping[str, Any]) -> frozenset[str] | None:
    """The projections target_modules names; None when it is a pattern (the weights' keys then decide)."""
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return None
    if isinstance(targets, str):
        return None  # a regular expression over module paths: the keys, checked one by one, say what it matched
    if not isinstance(targets, list) or not all(isinstance(target, str) for target in targets):
        raise InvalidLoraAdapter(f"The LoRA adapter's target_modules must be names, got {targets!r}.", param="lora_path")
    unknown = sorted(set(targets) - PROJECTIONS)
    if unknown:
        raise InvalidLoraAdapter(
            f"The LoRA adapter targets {', '.join(unknown)}, which the engine cannot adapt; it adapts "
            f"{', '.join(sorted(PROJECTIONS))}.", param="lora_path",
        )  # fmt: skip
    return frozenset(targets)


def _parse_key(key: str, num_layers: int) -> tuple[int, str, str]:
    match = _KEY.fullmatch(key)
    if match is None:
        raise InvalidLoraAdapter(
            f"The LoRA adapter's tensor {key} is not a LoRA weight of a decoder layer's projection; the engine "
            f"adapts {', '.join(sorted(PROJECTIONS))}.", param="lora_path",
        )  # fmt: skip
    layer, block, projection, half = int(match[1]), match[2], match[3], match[4]
    expected_block = "self_attn" if _FUSED_OF.get(projection) in ("qkv", "o_proj") else "mlp"
    if projection not in PROJECTIONS or block != expected_block:
        raise InvalidLoraAdapter(
            f"The LoRA adapter targets {block}.{projection}, which the base model does not have; the engine "
            f"adapts {', '.join(sorted(PROJECTIONS))}.", param="lora_path",
        )  # fmt: skip
    if layer >= num_layers:
        raise InvalidLoraAdapter(
            f"The LoRA adapter has weights for layer {layer}; the base model has {num_layers} layers.", param="lora_path"
        )
    return layer, projection, half


def _fused_pairs(
    pairs: Mapping[tuple[int, str], Mapping[str, torch.Tensor]], layer: int, shapes: Mapping[str, tuple[int, int]],
    scale: float, dtype: torch.dtype, device: torch.device,
) -> dict[str, LoraPair]:  # fmt: skip
    """One decoder layer's fused pairs (see the module docstring's drawing); a fused layer none targets is absent."""
    fused: dict[str, LoraPair] = {}
    for name, projections in FUSED_PROJECTIONS.items():
        targeted = [p for p in projections if (layer, p) in pairs]
        if not targeted:
            continue
        a = torch.cat([pairs[layer, p]["A"].float() for p in targeted])
        b = torch.zeros(sum(shapes[p][0] for p in projections), a.shape[0])
        row, column = 0, 0
        for projection in projections:
            out_features = shapes[projection][0]
            if projection in targeted:
                half_b = pairs[layer, projection]["B"].float()
                b[row : row + out_features, column : column + half_b.shape[1]] = half_b * scale
                column += half_b.shape[1]
            row += out_features
        fused[name] = LoraPair(a.to(device=device, dtype=dtype).contiguous(), b.to(device=device, dtype=dtype).contiguous())
    return fused


class LoraBatch:
    """Which rows of a step's flat batch run through which adapter; built once per step, read by every layer.

    ``groups`` holds each adapter of the step with its rows' indices, or None for every row.
    """

    __slots__ = ("groups",)

    def __init__(self, groups: list[tuple[torch.Tensor | None, LoraAdapter]]) -> None:
        self.groups = groups

    @classmethod
    def of_rows(
        cls, adapters: Iterable[LoraAdapter | None], num_rows: Iterable[int], device: torch.device
    ) -> LoraBatch | None:
        """The batch for sequences in flat order, sequence ``i`` with ``num_rows[i]`` rows; None when none has an adapter."""
        adapters, num_rows = list(adapters), list(num_rows)
        present = {adapter.adapter_id: adapter for adapter in adapters if adapter is not None}
        if not present:
            return None
        if len(present) == 1 and all(adapter is not None for adapter in adapters):
            return cls([(None, next(iter(present.values())))])  # every row: no gather, no scatter
        slot = {adapter_id: index + 1 for index, adapter_id in enumerate(present)}  # 0: the base model's rows
        per_seq = torch.tensor([0 if a is None else slot[a.adapter_id] for a in adapters], device=device)
        per_row = per_seq.repeat_interleave(torch.tensor(num_rows, device=device))
        return cls([((per_row == slot[adapter_id]).nonzero().squeeze(1), adapter) for adapter_id, adapter in present.items()])

    def add_delta(self, layer: int, fused: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (fused layer ``fused``'s base output for ``x``) with each adapter's delta added to its rows."""
        for rows, adapter in self.groups:
            pair = adapter.layers[layer].get(fused)
            if pair is None:
                continue
            if rows is None:
                out = out.addmm(x @ pair.a.T, pair.b.T)
            else:
                out.index_add_(0, rows, (x.index_select(0, rows) @ pair.a.T) @ pair.b.T)
        return out


class LoadedAdapters:
    """The adapters an engine serves, by name: at most ``max_loras`` of rank at most ``max_rank``.

    ``read`` may run on any thread (it only reads the model's shapes); ``add`` and ``remove`` run on
    the engine's, between two steps, so a step never sees an adapter half added.
    """

    def __init__(self, max_loras: int, max_rank: int) -> None:
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.by_name: dict[str, LoraAdapter] = {}
        self._ids = itertools.count(1)  # next() is atomic under the GIL: reads on two threads get two ids

    def read(self, path: str | Path, name: str, model: LlamaForCausalLM) -> LoraAdapter:
        """The adapter at ``path``, checked (InvalidLoraAdapter), not yet served."""
        self._check_room(name)
        return read_adapter(path, name, model, max_rank=self.max_rank, adapter_id=next(self._ids))

    def add(self, adapter: LoraAdapter) -> None:
        self._check_room(adapter.name)
        self.by_name[adapter.name] = adapter

    def get(self, name: str) -> LoraAdapter:
        adapter = self.by_name.get(name)
        if adapter is None:
            raise LoraNotLoaded(f"The LoRA adapter '{name}' is not loaded.", param="model")
        return adapter

    def remove(self, name: str) -> LoraAdapter:
        adapter = self.by_name.pop(name, None)
        if adapter is None:
            raise LoraNotLoaded(f"The LoRA adapter '{name}' cannot be found.", param="lora_name")
        return adapter

    def _check_room(self, name: str) -> None:
        if name in self.by_name:
            raise InvalidLoraAdapter(f"The LoRA adapter '{name}' has already been loaded.", param="lora_name")
        if len(self.by_name) >= self.max_loras:
            raise LoraLimitReached(
                f"{len(self.by_name)} LoRA adapters are loaded, this engine's max_loras: unload one first."
            )
