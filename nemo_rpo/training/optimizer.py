"""Megatron DDP wrapping, the Adam optimizer and its learning-rate schedule.

Per training step the caller does (Megatron-LM's ``train_step``)::

    for chunk in models: chunk.zero_grad_buffer()     # DDP grads live in a flat buffer
    optimizer.zero_grad()
    forward_backward_func(...)                          # calls config.finalize_model_grads_func
    ok, grad_norm, _ = optimizer.step()                 # clip, Adam, copy main -> model params
    if ok: scheduler.step(increment=1)

This file also carries three narrow patches for megatron-core 0.16.1's ``DistributedOptimizer`` when it
falls back to ``torch.optim.AdamW`` (no apex / Transformer Engine): without them a checkpoint cannot be
loaded into it, and a resumed run uses the wrong Adam step. See :func:`_patch_distributed_optimizer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import MegatronModule
from megatron.core.utils import get_model_config

from nemo_rpo.config.schema import ConfigError, OptimConfig, ParallelConfig

__all__ = ["build_optimizer", "build_scheduler", "schedule_change", "wrap_ddp"]


def wrap_ddp(
    model: MegatronModule, parallel: ParallelConfig, *, bucket_size: int | None = None
) -> DistributedDataParallel:
    """Wrap one model chunk in megatron's DDP and register its hooks on the shared TransformerConfig.

    Megatron's DDP keeps gradients in contiguous buckets (``param.main_grad``) and reduces them once per
    step, from ``finalize_model_grads`` called by the pipeline schedule; ``no_sync`` lets the schedule
    skip reduction for all but the last micro-batch. Gradients are averaged over data-parallel ranks.
    16-bit models accumulate and reduce gradients in fp32 (Megatron-LM's default for bf16).

    Args:
        model: a ``GPTModel`` stage (or any ``MegatronModule``).
        parallel: ``use_distributed_optimizer`` shards optimizer state and reduce-scatters gradients.
        bucket_size: elements per gradient bucket; ``None`` is megatron's default.
    """
    config = get_model_config(model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.bf16 or config.fp16,
        overlap_grad_reduce=False,
        overlap_param_gather=False,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        bucket_size=bucket_size,
    )
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync
    return ddp


def _schedule_settings(optim: OptimConfig, max_steps: int) -> dict[str, Any]:
    """``OptimizerParamScheduler``'s schedule arguments for this config (its ``state_dict`` keys + ``init_lr``)."""
    decay_steps = max(max_steps, optim.warmup_steps + 1)  # megatron asserts warmup < decay
    return {
        "init_lr": 0.0 if optim.warmup_steps > 0 else optim.lr,
        "max_lr": optim.lr,
        "min_lr": optim.min_lr,
        "lr_warmup_steps": optim.warmup_steps,
        "lr_decay_steps": decay_steps,
        "lr_decay_style": optim.decay_style,
        "start_wd": optim.weight_decay,
        "end_wd": optim.weight_decay,
        "wd_incr_steps": decay_steps,
        "wd_incr_style": "constant",
    }


def build_scheduler(
    optimizer: MegatronOptimizer,
    optim: OptimConfig,
    max_steps: int,
    *,
    keep_checkpoint_schedule: bool = False,
) -> OptimizerParamScheduler:
    """Linear warmup from 0 to ``optim.lr`` over ``warmup_steps``, then constant/linear/cosine to ``min_lr``.

    Megatron's convention: the scheduler's ``num_steps`` counts finished optimizer steps, so step ``k``
    (0-based) runs at ``lr * k / warmup_steps`` during warmup (the very first update has lr 0 when
    warmup is on) and decay reaches ``min_lr`` at ``max_steps``. On resume the config's schedule wins
    (``override_opt_param_scheduler``; only the step count is restored) unless ``keep_checkpoint_schedule``
    (``use_checkpoint_opt_param_scheduler``); callers check first that they agree
    (:func:`schedule_change`, ``checkpoint.resume_schedule``).
    """
    return OptimizerParamScheduler(
        optimizer,
        **_schedule_settings(optim, max_steps),
        use_checkpoint_opt_param_scheduler=keep_checkpoint_schedule,
        override_opt_param_scheduler=not keep_checkpoint_schedule,
    )


# How each scheduler setting is set in the config, for messages.
_SCHEDULE_KEYS = {"max_lr": "optim.lr", "min_lr": "optim.min_lr", "lr_warmup_steps": "optim.warmup_steps",
                  "lr_decay_steps": "decay steps (trainer.max_steps)", "lr_decay_style": "optim.decay_style",
                  "end_wd": "optim.weight_decay"}  # fmt: skip


def schedule_change(saved: Mapping[str, Any], optim: OptimConfig, max_steps: int, start: int) -> str | None:
    """How this config's schedule differs from a checkpoint's over the steps a resume would run.

    Args:
        saved: the checkpoint's scheduler ``state_dict``.
        optim: this run's optimizer config.
        max_steps: this run's ``trainer.max_steps``.
        start: the checkpoint's step: steps ``start + 1 .. max_steps`` remain.

    Returns:
        ``None`` when every remaining step gets the same learning rate and weight decay under both
        schedules; else the settings that differ and the first step whose lr changes, e.g.
        ``decay steps (trainer.max_steps) 20 -> 30; lr of step 21 0.00e+00 -> 1.04e-03``.
    """
    new = _schedule_settings(optim, max_steps)
    old = {**new, **{key: saved[key] for key in new if key in saved}}
    # megatron saves no init_lr: the checkpoint's follows our rule from its own warmup and lr
    old["init_lr"] = 0.0 if old["lr_warmup_steps"] > 0 else old["max_lr"]
    # No optimizer: the schedulers only compute values (their step(0) finds no param groups to set).
    before = OptimizerParamScheduler(SimpleNamespace(param_groups=[]), **old)
    after = OptimizerParamScheduler(SimpleNamespace(param_groups=[]), **new)
    for step in range(start, max_steps):
        before.num_steps = after.num_steps = step
        lr_before, lr_after = before.get_lr({}), after.get_lr({})
        wd_before, wd_after = before.get_wd(), after.get_wd()
        if not math.isclose(lr_before, lr_after, rel_tol=1e-9, abs_tol=1e-15):
            first = f"lr of step {step + 1} {lr_before:.2e} -> {lr_after:.2e}"
        elif not math.isclose(wd_before, wd_after, rel_tol=1e-9, abs_tol=1e-15):
            first = f"weight decay of step {step + 1} {wd_before:g} -> {wd_after:g}"
        else:
            continue
        changed = [
            f"{name} {old[key]} -> {new[key]}" for key, name in _SCHEDULE_KEYS.items() if old[key] != new[key]
        ]
        return "; ".join([*changed, first])
    return None


def build_optimizer(
    models: Sequence[DistributedDataParallel],
    optim: OptimConfig,
    parallel: ParallelConfig,
    max_steps: int,
    *,
    keep_checkpoint_schedule: bool = False,
) -> tuple[MegatronOptimizer, OptimizerParamScheduler]:
    """Adam over the DDP-wrapped chunks via ``get_megatron_optimizer``, plus its scheduler.

    Precision comes from the model's TransformerConfig: bf16/fp16 models get fp32 main weights
    (and, for fp16, a dynamic loss scaler). ``optim.clip_grad`` clips the global L2 norm (0 = off);
    weight decay is decoupled (AdamW) and, as in megatron, skips biases and norm weights.
    Also sets ``config.grad_scale_func`` so the pipeline schedules scale the loss for fp16.
    ``keep_checkpoint_schedule``: see :func:`build_scheduler`.

    Returns:
        ``(optimizer, scheduler)``; ``optimizer.step()`` returns ``(ok, grad_norm, num_zeros)``.
    """
    if not models:
        raise ValueError("build_optimizer: no model chunks")
    config = get_model_config(models[0])
    for chunk in models:
        if chunk.ddp_config.use_distributed_optimizer != parallel.use_distributed_optimizer:
            raise ConfigError(
                "parallel.use_distributed_optimizer: differs from the DDP wrapper; wrap with wrap_ddp"
            )
    if parallel.use_distributed_optimizer:
        _patch_distributed_optimizer()
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=config.bf16,
        fp16=config.fp16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, list(models))
    if not torch.cuda.is_available():
        _use_fused_cpu_adam(optimizer)
    config.grad_scale_func = optimizer.scale_loss
    return optimizer, build_scheduler(
        optimizer, optim, max_steps, keep_checkpoint_schedule=keep_checkpoint_schedule
    )


def _use_fused_cpu_adam(optimizer: MegatronOptimizer) -> None:
    """Switch megatron's ``torch.optim.AdamW`` fallback to torch's fused CPU kernel (one pass per tensor
    instead of a dozen elementwise ops; ~4x faster on the anchor shape, same update to float rounding).

    Megatron constructs the optimizer itself without a ``fused`` argument; the flag is read from the
    param groups at every ``step()``, so it is set there. Only fp32 CPU parameters qualify (the main
    params of bf16/fp16 models are fp32 too).
    """
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in chained:
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            continue
        for group in inner.param_groups:
            if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in group["params"]):
                group["fused"], group["foreach"] = True, False


# --------------------------------------------------------------------------------------------------
# DistributedOptimizer fixes (megatron-core 0.16.1, torch AdamW fallback only)
# --------------------------------------------------------------------------------------------------

_PATCHED = False


def _patch_distributed_optimizer() -> None:
    """Fix three bugs of ``DistributedOptimizer`` with ``torch.optim.AdamW`` (``HAVE_APEX_OR_TE`` false).

    torch's Adam keeps a per-parameter ``step`` tensor in its state; megatron stores one ``step`` in the
    param groups instead and converts back and forth, with three mistakes:

    1. ``state_dict()`` asserts exactly one distinct ``step`` over the inner optimizer's state; before
       the first ``step()`` that state is empty, so ``sharded_state_dict(is_loading=True)`` — hence
       every checkpoint load into a fresh optimizer — fails. Fixed: an empty state reports step 0.
    2. ``_set_main_param_and_optimizer_states`` copies into every key of the Adam state, ``step``
       included, but checkpoint tensors never hold ``step`` -> ``KeyError: 'step'``. Fixed: skip ``step``
       (it is restored from the param groups by ``load_state_dict``).
    3. ``load_state_dict()`` gives every parameter the *same* ``step`` tensor; torch's Adam increments
       it in place once per parameter, so bias correction after a resume is wrong (step 28 for 3).
       Fixed: each parameter gets its own copy.

    With apex or Transformer Engine megatron uses FusedAdam, which keeps ``step`` in the param groups;
    nothing is patched then.
    """
    global _PATCHED
    from megatron.core.optimizer import distrib_optimizer

    if _PATCHED or distrib_optimizer.HAVE_APEX_OR_TE:
        return
    cls = distrib_optimizer.DistributedOptimizer
    original_state_dict = cls.state_dict
    original_set_states = cls._set_main_param_and_optimizer_states
    original_load_state_dict = cls.load_state_dict

    def state_dict(self: distrib_optimizer.DistributedOptimizer) -> dict:
        if len(self.optimizer.state) > 0:
            return original_state_dict(self)
        inner = self.optimizer.state_dict()  # param groups are fresh dicts; safe to edit
        groups = inner["param_groups"]
        for group in groups:
            del group["params"]
            group["step"] = 0
        result = {"optimizer": {k: v for k, v in inner.items() if k != "state"}}
        if self.grad_scaler:
            result["grad_scaler"] = self.grad_scaler.state_dict()
        return result

    def set_main_param_and_optimizer_states(
        self: distrib_optimizer.DistributedOptimizer, model_param: torch.nn.Parameter, tensors: dict
    ) -> None:
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original_set_states(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        destinations = {"param": main_param, **{k: v for k, v in state.items() if k != "step"}}
        for key, destination in destinations.items():
            destination.copy_(tensors[key])
        return None

    def load_state_dict(self: distrib_optimizer.DistributedOptimizer, state_dict: dict) -> None:
        original_load_state_dict(self, state_dict)
        for state in self.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    cls.state_dict = state_dict
    cls._set_main_param_and_optimizer_states = set_main_param_and_optimizer_states
    cls.load_state_dict = load_state_dict
    _PATCHED = True
