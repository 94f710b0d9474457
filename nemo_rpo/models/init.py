"""Layout-independent weight initialisation: the same seed gives the same model at any TP/PP layout.

Megatron initialises each rank's shard from that rank's random stream, so a model built with TP=2 or
PP=2 differs from the TP=1 model of the same seed (and GQA/SwiGLU shards are not even contiguous slices
of one master weight). Users expect ``parallel.tp=2`` to change the speed, not the run. We therefore
re-draw every matrix from its *checkpoint* identity: megatron's ``sharded_state_dict`` names each local
tensor by its global key, global shape and offset (the same metadata that lets a TP=2 checkpoint load at
TP=1). Each global matrix is drawn from a generator seeded by ``(seed, key, layer)`` and this rank copies
out its slice; tied embedding copies share a key and so stay equal.

Distributions follow megatron's defaults: ``normal(0, init_method_std)`` and, for the two output
projections of every layer (``linear_proj``, ``linear_fc2``), ``normal(0, std / sqrt(2 * num_layers))``.
Vectors (norm weights, biases) are constants in megatron already and are left as built.
"""

from __future__ import annotations

import math
import zlib

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.transformer.transformer_config import TransformerConfig

__all__ = ["layout_invariant_init_", "sharded_tensors"]

_SCALED = ("linear_proj.weight", "linear_fc2.weight")


def _flatten(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _flatten(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from _flatten(value)
    else:
        yield tree


def sharded_tensors(module: torch.nn.Module):
    """Every ``ShardedTensor`` of ``module``'s checkpoint view; ``.data`` of each is a view of the parameter."""
    for item in _flatten(module.sharded_state_dict()):
        if isinstance(item, ShardedTensorFactory):
            yield from (t for t in _flatten(item.build()) if isinstance(t, ShardedTensor))
        elif isinstance(item, ShardedTensor):
            yield item


@torch.no_grad()
def layout_invariant_init_(module: torch.nn.Module, config: TransformerConfig, seed: int) -> int:
    """Re-initialise every weight matrix of ``module`` (one GPT stage) in place; returns how many.

    Args:
        module: an unwrapped megatron ``GPTModel`` stage (before DDP wrapping).
        config: its ``TransformerConfig`` (``init_method_std``, ``num_layers``).
        seed: the run's seed.
    """
    done: set[tuple[str, tuple[int, ...]]] = set()
    count = 0
    for sh in sharded_tensors(module):
        if sh.flattened_range is not None:
            raise ValueError(f"{sh.key}: flattened shards are not supported for initialisation")
        lead = sh.prepend_axis_num
        shape = tuple(sh.global_shape[lead:])
        if len(shape) < 2:
            continue
        ident = (sh.key, tuple(sh.global_offset))
        if ident in done:  # the two halves of a SwiGLU fc1 are separate entries; others appear once
            continue
        done.add(ident)
        std = config.init_method_std
        if sh.key.endswith(_SCALED):
            std = std / math.sqrt(2.0 * config.num_layers)
        layer = tuple(sh.global_offset[:lead])
        gen = torch.Generator(device=sh.data.device)
        gen.manual_seed((seed * 1_000_003 + zlib.crc32(f"{sh.key}{layer}".encode())) % (2**63))
        full = torch.empty(shape, dtype=torch.float32, device=sh.data.device).normal_(0.0, std, generator=gen)
        index = tuple(slice(o, o + n) for o, n in zip(sh.global_offset[lead:], sh.data.shape))
        local = full[index]
        sh.data.copy_(local.reshape(sh.data.shape).to(sh.data.dtype))
        count += 1
    return count
