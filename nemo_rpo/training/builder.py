"""Build the trainable policy (model + DDP + optimizer + scheduler) and record the resolved config."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from nemo_rpo.config.schema import ModelConfig, ParallelConfig, RPOConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.training.optimizer import build_optimizer, wrap_ddp


def build_policy(cfg: RPOConfig, vocab_size: int):
    """Megatron GPT for this rank's pipeline stage, wrapped in megatron DDP, with Adam + LR schedule.

    Returns ``(model_chunks, optimizer, scheduler)``; ``model_chunks`` is the list megatron's
    schedules and checkpointing expect.
    """
    chunks = build_policy_model(cfg, vocab_size)
    optimizer, scheduler = build_optimizer(chunks, cfg.optim, cfg.parallel, cfg.trainer.max_steps,
                                           keep_checkpoint_schedule=cfg.checkpoint.resume_schedule == "checkpoint")  # fmt: skip
    return chunks, optimizer, scheduler


def build_policy_model(cfg: RPOConfig, vocab_size: int) -> list:
    """The DDP-wrapped model chunks alone (the optimizer is built separately, e.g. after a warm-up)."""
    return build_policy_chunks(
        cfg.model, cfg.parallel, cfg.model.vocab_size or vocab_size, seed=cfg.trainer.seed
    )


def build_policy_chunks(model: ModelConfig, parallel: ParallelConfig, vocab_size: int, *, seed: int) -> list:
    """:func:`build_policy_model` from the component configs (what :class:`nemo_rpo.RPOModel` is built from)."""
    gpt = build_gpt_model(model, parallel, vocab_size, init_seed=seed)
    if model.lora.rank > 0 and torch.distributed.get_rank() == 0:
        trainable = sum(p.numel() for p in gpt.parameters() if p.requires_grad)
        total = sum(p.numel() for p in gpt.parameters())
        print(f"model.lora: rank {model.lora.rank} on {', '.join(model.lora.target_modules)}; trainable parameters: "
              f"{trainable:,} of {total:,} on rank 0 ({100 * trainable / total:.2f}%)", flush=True)  # fmt: skip
    # Losses return (sum, num_prompts, report): megatron then divides gradients by the global prompt
    # count instead of averaging per micro-batch and per data-parallel rank.
    gpt.config.calculate_per_token_loss = True
    return [wrap_ddp(gpt, parallel)]


def save_resolved_config(cfg: RPOConfig, info: ParallelInfo) -> None:
    """Rank 0 writes ``<exp_dir>/config.yaml``: the fully resolved config of this run.

    Written whole or not at all (a temporary file renamed over it). Runs call it once their checks have
    passed (config, data, resume), so a run that fails on bad input leaves an existing file as it was.
    """
    if info.rank != 0:
        return
    from omegaconf import OmegaConf

    path = Path(cfg.exp_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg))))
    os.replace(tmp, path)
