"""The paged KV cache: one pool of blocks shared by every layer.

Each layer owns a K and a V tensor of ``num_blocks * block_size`` token
slots. A slot is addressed by the flat index the block manager defines::

    slot(i) = block_table[i // block_size] * block_size + i % block_size

    k_flat   [num_blocks * block_size, num_kv_heads, head_dim]   written per token at slot_mapping
    k_blocks [num_blocks, block_size, num_kv_heads, head_dim]    the same memory, gathered per block

Gathering whole blocks (``k_blocks[block_table]``) moves ``block_size`` tokens
per index instead of one, which is what makes decode attention cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class LayerKV:
    """One layer's K and V; the flat and block views share storage."""

    k: torch.Tensor  # [num_slots, num_kv_heads, head_dim]
    v: torch.Tensor
    k_blocks: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_blocks: torch.Tensor


class KVCache:
    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes one block takes across all layers, K and V."""
        element_size = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * element_size

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.storage: torch.Tensor | None = None
        self.layers: list[LayerKV] = []
        self.allocate()

    def allocate(self) -> None:
        """Reserve the pool (again, after ``release``); no block holds anything a sequence wrote."""
        num_layers, num_blocks, block_size = self.num_layers, self.num_blocks, self.block_size
        num_kv_heads, head_dim = self.num_kv_heads, self.head_dim
        # Padded attention reads slots no sequence wrote, and a NaN there would
        # survive the mask (NaN * 0 is NaN), so every block must hold numbers
        # before it is read. Zeroing gigabytes up front took seconds at start
        # (page faults on first touch): a block is zeroed when the block manager
        # first hands it out instead, and block 0, the padding block, now.
        self.storage = torch.empty(
            2, num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype=self.dtype, device=self.device
        )
        self.zero_block(0)
        num_slots = num_blocks * block_size
        self.layers = [
            LayerKV(
                k=self.storage[0, layer].view(num_slots, num_kv_heads, head_dim),
                v=self.storage[1, layer].view(num_slots, num_kv_heads, head_dim),
                k_blocks=self.storage[0, layer],
                v_blocks=self.storage[1, layer],
            )
            for layer in range(num_layers)
        ]

    def release(self) -> None:
        """Give the pool's memory back (``/sleep``): nothing may run until ``allocate``."""
        self.storage, self.layers = None, []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # freed tensors stay in torch's cache otherwise, unseen by other processes

    @property
    def allocated(self) -> bool:
        return self.storage is not None

    def zero_block(self, block_id: int) -> None:
        """Fill one block with zeros in every layer, K and V (before its first use)."""
        assert self.storage is not None, "the pool was released"
        self.storage[:, :, block_id].zero_()

    def __getitem__(self, layer: int) -> LayerKV:
        return self.layers[layer]

    def __len__(self) -> int:
        return self.num_layers

    @property
    def num_bytes(self) -> int:
        """What the pool reserves (also while released: what ``allocate`` takes again)."""
        return self.bytes_per_block(self.num_layers, self.block_size, self.num_kv_heads, self.head_dim, self.dtype) * self.num_blocks
