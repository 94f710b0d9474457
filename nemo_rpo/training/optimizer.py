"""Megatron DDP wrapping, the Adam optimizer and its learning-rate schedule.

Per training step the caller does (Megatron-LM's ``train_step``)::

    for chunk in models: chunk.zero_grad_buffer()     # DDP grads live in a flat buffer
    optimizer.zero_grad()
    forward_backward_func(...)                          # calls config.finalize_model_grads_func
    ok, grad_norm, _ = optimizer.step()                 # clip, Adam, copy main -> model params
    if ok: scheduler.step(increment=1)

With ``parallel.use_distributed_optimizer`` it installs the ``distributed_optimizer`` patches of
:mod:`nemo_rpo.patches`: three fixes of megatron-core 0.16.1's ``DistributedOptimizer`` when it falls back
to ``torch.optim.AdamW`` (no apex / Transformer Engine), without which a checkpoint cannot be loaded into
it and a resumed run uses the wrong Adam step.
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

from nemo_rpo import patches
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
        patches.install("distributed_optimizer")
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
