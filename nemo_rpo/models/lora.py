"""LoRA adapters on megatron's tensor-parallel linear layers: ``y = W x + (alpha / r) * B A x``.

The adapted layers are chosen by ``ModuleSpec`` (:func:`lora_spec`), not by flags inside megatron's
modules: :class:`LoraColumnParallelLinear` and :class:`LoraRowParallelLinear` replace the local spec's
``ColumnParallelLinear`` / ``RowParallelLinear`` at the layers named in ``model.lora.target_modules``. Each
keeps megatron's weight (frozen) and adds two matrices, sharded as the weight is:

- column-parallel (``linear_qkv``, ``linear_fc1``; output split over TP): ``A [r, in]`` replicated,
  ``B [out / tp, r]`` split on its output dim. ``h = A x`` enters the TP region with
  ``copy_to_tensor_model_parallel_region`` (identity forward, all-reduce backward): ``A``'s gradient and
  the input's are the sums over every rank's output slice.
- row-parallel (``linear_proj``, ``linear_fc2``; input split over TP): ``A [r, in / tp]`` split on its
  input dim, ``B [out, r]`` replicated. ``h = A x`` is a partial sum, all-reduced
  (``reduce_from_tensor_model_parallel_region``) before ``B``, as the weight's product is.

``B`` starts at zero, so a new adapter leaves the model's outputs unchanged bit for bit (``W x + 0``);
``A`` is drawn from PEFT's default (Kaiming-uniform, bound ``1 / sqrt(in)``) layout-independently
(:func:`init_adapters_`), so TP=1, TP=2 and PP=2 build the same adapters from one seed. Checkpoint keys are
``<layer>.lora_a`` / ``<layer>.lora_b`` with megatron's sharding metadata (SwiGLU's fc1 ``B`` split as its
weight is), so adapters reshard like every other tensor.

:func:`adapters_disabled` switches every adapter off (the reference policy ``pi_ref`` is the base model);
:func:`merge_adapters_` folds them into the base weights (iterative RPO's ``pi_ref := pi``) and starts new
ones. Sequence parallelism and the Transformer Engine spec are not supported (a ``ConfigError`` says so).
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)  # fmt: skip
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from megatron.core.utils import unwrap_model

from nemo_rpo.config.schema import ConfigError, LoraConfig
from nemo_rpo.models.init import sharded_tensors

__all__ = [
    "LoraColumnParallelLinear", "LoraLinear", "LoraRowParallelLinear", "adapter_layers", "adapters_disabled",
    "freeze_base_", "has_adapters", "init_adapters_", "is_adapter_key", "lora_spec", "merge_adapters_",
]  # fmt: skip

ADAPTER_SUFFIXES = ("lora_a", "lora_b")


def is_adapter_key(name: str) -> bool:
    """Whether a parameter / checkpoint key is an adapter matrix (``...lora_a`` or ``...lora_b``)."""
    return name.rsplit(".", 1)[-1] in ADAPTER_SUFFIXES


class LoraLinear:
    """What both adapted layers share: the two matrices, the scale, the on/off switch."""

    lora_enabled: bool = True

    def _init_lora(self, rank: int, alpha: float, dropout: float, a_shape, b_shape) -> None:
        if self.config.sequence_parallel:
            raise ConfigError("model.lora.rank: LoRA adapters do not support sequence parallelism")
        dtype = self.config.params_dtype
        device = self.weight.device
        self.lora_rank, self.lora_scale = rank, alpha / rank
        self.lora_a = torch.nn.Parameter(torch.zeros(a_shape, dtype=dtype, device=device))
        self.lora_b = torch.nn.Parameter(torch.zeros(b_shape, dtype=dtype, device=device))
        self.lora_dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``scale * B A`` of this rank's shard, in the weight's local shape and dtype (computed in fp32)."""
        return (self.lora_scale * self.lora_b.float() @ self.lora_a.float()).to(self.weight.dtype)


class LoraColumnParallelLinear(LoraLinear, ColumnParallelLinear):
    """``ColumnParallelLinear`` + ``scale * B A x``: ``A`` replicated, ``B`` split on the output dim.

    Args (beyond megatron's): ``lora_rank``, ``lora_alpha``, ``lora_dropout`` (``model.lora``), and
    ``lora_swiglu``: the layer is SwiGLU's fc1, whose two halves TP splits separately (its ``B`` is
    checkpointed with the same factory as its weight).
    """

    def __init__(self, input_size: int, output_size: int, *, lora_rank: int, lora_alpha: float,
                 lora_dropout: float = 0.0, lora_swiglu: bool = False, **kwargs) -> None:  # fmt: skip
        super().__init__(input_size, output_size, **kwargs)
        if self.gather_output:
            raise ConfigError("model.lora.target_modules: a column-parallel layer that gathers its output")
        self.lora_swiglu = lora_swiglu
        self._init_lora(lora_rank, lora_alpha, lora_dropout, (lora_rank, input_size),
                        (self.output_size_per_partition, lora_rank))  # fmt: skip
        set_tensor_model_parallel_attributes(self.lora_b, True, 0, 1)

    def forward(self, input_: torch.Tensor, weight: torch.Tensor | None = None,
                runtime_gather_output: bool | None = None):  # fmt: skip
        output, bias = super().forward(input_, weight, runtime_gather_output)
        if not self.lora_enabled:
            return output, bias
        h = F.linear(self.lora_dropout(input_), self.lora_a)
        h = copy_to_tensor_model_parallel_region(h, group=self.tp_group)
        return output + self.lora_scale * F.linear(h, self.lora_b), bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        own = self.state_dict(prefix="", keep_vars=True)
        lora = make_sharded_tensors_for_checkpoint(
            {k: own[k] for k in ADAPTER_SUFFIXES}, prefix, {"lora_b": 0}, sharded_offsets,
            tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"],
        )  # fmt: skip
        if self.lora_swiglu:
            singleton = (metadata or {}).get("singleton_local_shards", False)
            key = f"{prefix}lora_b"
            lora[key] = apply_swiglu_sharded_factory(lora[key], sharded_offsets, singleton)
        state.update(lora)
        return state


class LoraRowParallelLinear(LoraLinear, RowParallelLinear):
    """``RowParallelLinear`` + ``scale * B A x``: ``A`` split on the input dim, ``B`` replicated."""

    def __init__(self, input_size: int, output_size: int, *, lora_rank: int, lora_alpha: float,
                 lora_dropout: float = 0.0, **kwargs) -> None:  # fmt: skip
        super().__init__(input_size, output_size, **kwargs)
        if not self.input_is_parallel:
            raise ConfigError("model.lora.target_modules: a row-parallel layer whose input is not split")
        self._init_lora(lora_rank, lora_alpha, lora_dropout, (lora_rank, self.input_size_per_partition),
                        (output_size, lora_rank))  # fmt: skip
        set_tensor_model_parallel_attributes(self.lora_a, True, 1, 1)

    def forward(self, input_: torch.Tensor):
        output, bias = super().forward(input_)
        if not self.lora_enabled:
            return output, bias
        x = input_
        if self.training and isinstance(self.lora_dropout, torch.nn.Dropout):
            with tensor_parallel.get_cuda_rng_tracker().fork():  # each rank drops from its own slice
                x = self.lora_dropout(x)
        h = reduce_from_tensor_model_parallel_region(F.linear(x, self.lora_a), group=self.tp_group)
        return output + self.lora_scale * F.linear(h, self.lora_b), bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        own = self.state_dict(prefix="", keep_vars=True)
        state.update(make_sharded_tensors_for_checkpoint(
            {k: own[k] for k in ADAPTER_SUFFIXES}, prefix, {"lora_a": 1}, sharded_offsets,
            tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"],
        ))  # fmt: skip
        return state


def lora_spec(spec: ModuleSpec, lora: LoraConfig, *, swiglu: bool) -> ModuleSpec:
    """The local transformer-layer spec with the ``lora.target_modules`` linears adapted (in place)."""
    if lora.rank == 0:
        return spec
    params = {"lora_rank": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout}
    attention = spec.submodules.self_attention.submodules
    mlp = spec.submodules.mlp.submodules
    slots = {"linear_qkv": (attention, LoraColumnParallelLinear, {}),
             "linear_proj": (attention, LoraRowParallelLinear, {}),
             "linear_fc1": (mlp, LoraColumnParallelLinear, {"lora_swiglu": swiglu}),
             "linear_fc2": (mlp, LoraRowParallelLinear, {})}  # fmt: skip
    for name in lora.target_modules:
        holder, cls, extra = slots[name]
        base = getattr(holder, name)
        expected = ColumnParallelLinear if cls is LoraColumnParallelLinear else RowParallelLinear
        if base is not expected:
            raise ConfigError(f"model.lora.target_modules: {name} is {getattr(base, '__name__', base)} in this "
                              f"layer spec, not megatron's {expected.__name__}")  # fmt: skip
        setattr(holder, name, ModuleSpec(module=cls, params={**params, **extra}))
    return spec


def _modules(model: torch.nn.Module | Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    chunks = [model] if isinstance(model, torch.nn.Module) else list(model)
    return unwrap_model(chunks)


def adapter_layers(model: torch.nn.Module | Sequence[torch.nn.Module]) -> list[LoraLinear]:
    """Every adapted linear layer of the model chunk(s), DDP-wrapped or not."""
    return [m for chunk in _modules(model) for m in chunk.modules() if isinstance(m, LoraLinear)]


def has_adapters(model: torch.nn.Module | Sequence[torch.nn.Module]) -> bool:
    return bool(adapter_layers(model))


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module | Sequence[torch.nn.Module]) -> Iterator[None]:
    """Run the base model: every adapter off inside the block (the reference policy), restored after."""
    layers = adapter_layers(model)
    before = [layer.lora_enabled for layer in layers]
    for layer in layers:
        layer.lora_enabled = False
    try:
        yield
    finally:
        for layer, state in zip(layers, before):
            layer.lora_enabled = state


def freeze_base_(module: torch.nn.Module) -> int:
    """``requires_grad = False`` on every non-adapter parameter (before DDP wrapping: megatron's DDP and
    optimizer then hold the adapters only); returns the trainable parameter count of this rank."""
    trainable = 0
    for name, param in module.named_parameters():
        param.requires_grad_(is_adapter_key(name))
        trainable += param.numel() if param.requires_grad else 0
    return trainable


@torch.no_grad()
def init_adapters_(module: torch.nn.Module, seed: int) -> int:
    """``B = 0``; ``A`` ~ U(-1/sqrt(in), 1/sqrt(in)) drawn whole per (key, layer) from ``seed`` and sliced to this
    rank's shard, so every TP/PP layout gets the same adapters. Returns the count of ``A`` matrices."""
    for layer in adapter_layers(module):
        layer.lora_b.zero_()
    count = 0
    for sh in sharded_tensors(module):
        if not sh.key.endswith(".lora_a"):
            continue
        lead = sh.prepend_axis_num
        shape = tuple(sh.global_shape[lead:])
        gen = torch.Generator(device=sh.data.device)
        layer = tuple(sh.global_offset[:lead])
        gen.manual_seed((seed * 1_000_003 + zlib.crc32(f"{sh.key}{layer}".encode())) % (2**63))
        bound = 1.0 / math.sqrt(shape[1])
        full = torch.empty(shape, dtype=torch.float32, device=sh.data.device).uniform_(
            -bound, bound, generator=gen
        )
        index = tuple(slice(o, o + n) for o, n in zip(sh.global_offset[lead:], sh.data.shape))
        sh.data.copy_(full[index].reshape(sh.data.shape).to(sh.data.dtype))
        count += 1
    return count


@torch.no_grad()
def merge_adapters_(model: torch.nn.Module | Sequence[torch.nn.Module], seed: int) -> None:
    """``W += scale * B A`` in every adapted layer (each rank its own shard), then new adapters
    (:func:`init_adapters_` with ``seed``): the model's outputs are unchanged up to the merge's rounding."""
    for layer in adapter_layers(model):
        layer.weight.add_(layer.delta_weight())
    for chunk in _modules(model):
        init_adapters_(chunk, seed)
