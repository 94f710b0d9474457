"""Reward-model training and scoring through megatron's forward/backward schedules.

The same machinery as the policy (:mod:`nemo_rpo.training.step`): megatron DDP, Adam from
``get_megatron_optimizer``, ``calculate_per_token_loss`` with the pair (or response) count as the
denominator, so the update is the exact mean over the global batch however it is split. All K responses
of a prompt stay in one micro-batch, so every pair of a prompt is seen together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from nemo_rpo.config.rm_schema import RMTrainConfig
from nemo_rpo.data.batch import PreferenceBatch
from nemo_rpo.losses.reward_model import bradley_terry_loss, regression_loss
from nemo_rpo.models.reward import build_reward_model, sequence_lengths
from nemo_rpo.training.optimizer import build_optimizer, wrap_ddp
from nemo_rpo.training.step import StepResult, optimizer_step, run_schedule, share_table

__all__ = [
    "RM_LINE",
    "RM_REPORT_KEYS",
    "build_reward_trainer",
    "rm_losses",
    "rm_step_metrics",
    "score_microbatches",
    "train_rm_step",
]

# Scalars summed over micro-batches and data-parallel ranks, in this order; divided once when logged.
RM_REPORT_KEYS = ("loss_sum", "loss_count", "correct_sum", "pair_count", "score_sum", "score_sq_sum",
                  "num_scores", "num_tokens")  # fmt: skip


# What a reward-model run prints per logged step (training.logger.console_line).
RM_LINE = ("loss {loss:.4f} | acc {accuracy:.3f} | score {score_mean:.3f} ± {score_std:.3f} | lr {lr:.2e} | "
           "grad_norm {grad_norm:.3f} | {tokens_per_s:.0f} tok/s")  # fmt: skip


def build_reward_trainer(cfg: RMTrainConfig, vocab_size: int):
    """The reward model for this rank's stage, wrapped in megatron DDP, with Adam + LR schedule.

    Returns ``(model_chunks, optimizer, scheduler)`` as :func:`nemo_rpo.training.builder.build_policy`.
    """
    model = build_reward_model(
        cfg.model, cfg.parallel, cfg.model.vocab_size or vocab_size, init_seed=cfg.trainer.seed
    )
    if (
        torch.cuda.is_available()
    ):  # megatron's local-spec norms are built on the CPU (Megatron-LM's get_model)
        model.cuda()
    # Losses return (sum, count, report): megatron divides gradients by the global count.
    model.config.calculate_per_token_loss = True
    chunks = [wrap_ddp(model, cfg.parallel)]
    optimizer, scheduler = build_optimizer(chunks, cfg.optim, cfg.parallel, cfg.trainer.max_steps,
                                           keep_checkpoint_schedule=cfg.checkpoint.resume_schedule == "checkpoint")  # fmt: skip
    return chunks, optimizer, scheduler


def rm_losses(
    *, scores: torch.Tensor, batch: PreferenceBatch, objective: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss_sum, count, report)`` of one micro-batch: the sum to divide by the global ``count``.

    Args:
        scores: ``[B*K]`` fp32 scores, prompt-major as in the batch.
        batch: the micro-batch (rewards order the pairs; without rewards the data order does).
        objective: ``bradley_terry`` (count = pairs) or ``regression`` (count = responses).
    """
    grid = scores.view(batch.num_prompts, batch.num_responses)
    if objective == "bradley_terry":
        loss_sum, stats = bradley_terry_loss(scores=grid, rewards=batch.rewards)
        count = stats["num_pairs"]
    elif objective == "regression":
        if batch.rewards is None:
            raise ValueError("objective=regression needs rewards in the data")
        loss_sum, stats = regression_loss(scores=grid, rewards=batch.rewards)
        count = stats["num_responses"]
    else:
        raise ValueError(f"unknown reward-model objective {objective!r}")
    detached = scores.detach().to(torch.float64)
    values = [loss_sum.detach(), count, stats["num_correct"], stats["num_pairs"], detached.sum(),
              detached.square().sum(), scores.numel(), sequence_lengths(batch.loss_mask).sum()]  # fmt: skip
    report = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=scores.device).reshape(()) for v in values]
    )
    return loss_sum, count.to(torch.int), report


def _forward_step(objective: str):
    def forward_step(data_iterator: Iterator[PreferenceBatch], model: torch.nn.Module):
        batch = next(data_iterator)
        output = model(
            batch.input_ids, batch.position_ids, None, sequence_lengths=sequence_lengths(batch.loss_mask)
        )

        def loss_func(scores: torch.Tensor):
            loss_sum, count, report = rm_losses(scores=scores, batch=batch, objective=objective)
            return loss_sum, count, {"report": report}

        return output, loss_func

    return forward_step


def train_rm_step(
    model: list, optimizer, scheduler, microbatches: Sequence[PreferenceBatch], objective: str
) -> StepResult:
    """Forward/backward over this rank's micro-batches, then one optimizer step (skipped when not finite)."""
    return optimizer_step(model, optimizer, scheduler, microbatches, _forward_step(objective), RM_REPORT_KEYS)


@torch.no_grad()
def score_microbatches(
    model: list, microbatches: Sequence[PreferenceBatch], num_examples: int
) -> torch.Tensor:
    """Scores ``[num_examples, K]`` of every sequence in ``microbatches`` (forward only, no grad).

    Each data-parallel rank passes its own shard (possibly none); rows are filled by ``batch.index``,
    summed over data-parallel ranks and shared from the last pipeline stage, so every rank returns the
    full table. Micro-batches of one call must share their shape (pipeline p2p buffers are fixed).
    """
    k = microbatches[0].num_responses if microbatches else 1
    table = torch.zeros(num_examples, k, dtype=torch.float64)
    if microbatches:
        training = [chunk.training for chunk in model]
        for chunk in model:
            chunk.eval()

        def forward_step(data_iterator, chunk):
            batch = next(data_iterator)
            lengths = sequence_lengths(batch.loss_mask)
            output = chunk(batch.input_ids, batch.position_ids, None, sequence_lengths=lengths)

            def loss_func(scores: torch.Tensor):
                grid = scores.view(batch.num_prompts, batch.num_responses)
                return (
                    scores.sum() * 0,
                    torch.tensor(1, dtype=torch.int),
                    {"scores": grid, "index": batch.index},
                )

            return output, loss_func

        outputs = run_schedule(model, microbatches, forward_step, forward_only=True)
        for chunk, was_training in zip(model, training):
            chunk.train(was_training)
        for out in outputs:
            table[out["index"].cpu()] = out["scores"].to(torch.float64).cpu()
    return share_table(table).to(torch.float32)


def rm_step_metrics(step: int, report: dict[str, float], grad_norm: float, lr: float, seconds: float) -> dict:
    """Turn a summed step report into the logged metrics (one JSON object; NaN written as null)."""
    n = max(report["num_scores"], 1.0)
    mean = report["score_sum"] / n
    var = max(report["score_sq_sum"] / n - mean * mean, 0.0)
    pairs = report["pair_count"]
    metrics = {
        "step": step,
        "loss": report["loss_sum"] / max(report["loss_count"], 1.0),
        "accuracy": report["correct_sum"] / pairs if pairs else None,
        "lr": lr,
        "grad_norm": grad_norm if grad_norm == grad_norm else None,
        "score_mean": mean,
        "score_std": var**0.5,
        "num_pairs": int(pairs),
        "tokens_per_s": report["num_tokens"] / seconds if seconds > 0 else None,
        "step_time_s": seconds,
    }
    return metrics
