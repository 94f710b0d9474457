"""One optimizer step and the reference pass, through megatron's forward/backward schedules.

The schedules handle pipeline parallelism (1F1B when pp > 1) and gradient accumulation over
micro-batches; all K responses of a prompt stay in the same micro-batch so the loss sees them together.

A step whose loss or gradients are not finite is skipped: no parameter, optimizer-state or scheduler
update. Megatron's fp32 and bf16 optimizers do not check (only the fp16 loss scaler does), so the check
is made here, over every rank's gradient buffers, before ``optimizer.step()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from nemo_rpo.config.schema import LossConfig
from nemo_rpo.data.batch import PreferenceBatch
from nemo_rpo.losses.logps import response_token_logps
from nemo_rpo.training.loss_adapter import REPORT_KEYS, make_loss_func


class NonFiniteStepsError(RuntimeError):
    """Too many steps had a non-finite loss or gradient (``trainer.max_skipped_steps``); same on every rank."""


@dataclass
class StepResult:
    """What one optimizer step did.

    Attributes:
        report: REPORT_KEYS summed over the global batch (valid on every rank).
        grad_norm: global gradient norm before clipping (NaN when the step was skipped).
        lr: learning rate of the step.
        skipped: no update was applied (a non-finite step, or an fp16 loss-scale overflow).
        non_finite: the loss or a gradient was NaN/inf; the step was skipped.
    """

    report: dict[str, float]
    grad_norm: float
    lr: float
    skipped: bool
    non_finite: bool = False


def batch_nll(model: torch.nn.Module, batch: PreferenceBatch) -> torch.Tensor:
    """Per-token NLL ``[B*R, T]`` of ``batch``'s labels on the last pipeline stage (the stage's output
    activation elsewhere).

    With labels, GPTModel computes it from vocab-parallel logits (no full-vocabulary gather on any rank),
    over the loss mask's columns only (PolicyGPTModel); a packed batch passes its shared-prompt layout.
    """
    return model(batch.input_ids, batch.position_ids, batch.attention_layout, labels=batch.labels,
                 loss_mask=batch.loss_mask)  # fmt: skip


def _forward_step(ref_lookup: Callable[[PreferenceBatch], torch.Tensor | None], loss: LossConfig):
    def forward_step(data_iterator: Iterator[PreferenceBatch], model: torch.nn.Module):
        batch = next(data_iterator)
        return batch_nll(model, batch), make_loss_func(batch, ref_lookup(batch), loss)

    return forward_step


def run_schedule(model, microbatches: Sequence[PreferenceBatch], forward_step, forward_only: bool) -> list:
    """Megatron's forward/backward schedule (1F1B when pp > 1) over this rank's micro-batches."""
    first = microbatches[0]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=model if isinstance(model, list) else [model],
        num_microbatches=len(microbatches),
        seq_length=first.input_ids.shape[1],
        micro_batch_size=first.input_ids.shape[0],
        forward_only=forward_only,
    )


def reduce_report(outputs: list, keys: Sequence[str] = REPORT_KEYS) -> dict[str, float]:
    """Sum the per-micro-batch reports, then over data-parallel ranks; share from the last stage."""
    total = torch.zeros(len(keys), dtype=torch.float64)
    for out in outputs:
        total += out["report"].to(torch.float64).cpu()
    # Summed over data-parallel ranks; only the last pipeline stage computed the loss, so share it.
    total = share_table(total)
    return dict(zip(keys, total.tolist()))


def train_step(
    model: list,
    optimizer,
    scheduler,
    microbatches: Sequence[PreferenceBatch],
    ref_lookup: Callable[[PreferenceBatch], torch.Tensor | None],
    loss: LossConfig,
) -> StepResult:
    """Forward/backward over this rank's micro-batches, then one optimizer step (Alg. 1, lines 3–5)."""
    return optimizer_step(
        model, optimizer, scheduler, microbatches, _forward_step(ref_lookup, loss), REPORT_KEYS
    )


def optimizer_step(
    model: list,
    optimizer,
    scheduler,
    microbatches: Sequence[PreferenceBatch],
    forward_step,
    keys: Sequence[str],
) -> StepResult:
    """One step of any model (policy or reward model): forward/backward through the schedule, the
    report (``keys``, summed over the global batch), then the update unless it is not finite."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    report = reduce_report(run_schedule(model, microbatches, forward_step, forward_only=False), keys)
    # fp16 gradients are loss-scaled: megatron's scaler checks them (and backs off) in optimizer.step().
    fp16 = get_model_config(model[0]).fp16
    non_finite = not math.isfinite(report["loss_sum"]) or (not fp16 and not grads_finite(model))
    ok, grad_norm = False, None
    lr = optimizer.param_groups[0]["lr"]  # the rate this step applies (megatron's warmup starts at 0)
    if not non_finite:
        ok, grad_norm, _ = optimizer.step()
    if ok:
        scheduler.step(increment=1)
    return StepResult(
        report=report,
        grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
        lr=float(lr),
        skipped=not ok,
        non_finite=non_finite,
    )


@torch.no_grad()
def loss_report(
    model: list,
    microbatches: Sequence[PreferenceBatch],
    ref_lookup: Callable[[PreferenceBatch], torch.Tensor | None],
    loss: LossConfig,
) -> dict[str, float]:
    """The report :func:`train_step` would return for these micro-batches, forward only, with no update."""
    outputs = run_schedule(model, microbatches, _forward_step(ref_lookup, loss), forward_only=True)
    return reduce_report(outputs)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite, in one reduction pass.

    ``min`` and ``max`` propagate NaN, and an infinity is the minimum or the maximum, so both extremes
    are finite exactly when every element is. ``torch.isfinite(t).all()`` materialises a mask in
    several passes: 28.6 vs 1.9 ms for the anchor model's 7.4M-element gradient buffer on 2 CPU cores.
    """
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def grads_finite(model: list) -> bool:
    """Whether every gradient of every rank is finite (collective over all ranks).

    Looks at the DDP gradient buffers after their data-parallel reduction: a NaN/inf in any rank's
    contribution also sits in the reduced gradient, so the answer is the same on every rank.
    """
    bad = torch.zeros(1, dtype=torch.float32)
    for chunk in model:
        for buffer in chunk.buffers + chunk.expert_parallel_buffers:
            if not all_finite(buffer.grad_data):
                bad.fill_(1.0)
    if torch.distributed.is_initialized():
        device = "cuda" if torch.cuda.is_available() else "cpu"
        bad = bad.to(device)
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bool(bad.item() == 0)


@torch.no_grad()
def sequence_logps(
    model: list, microbatches: Sequence[PreferenceBatch], num_examples: int, token_width: int | None = None
) -> torch.Tensor:
    """Summed response log-probs ``[num_examples, R]`` of every sequence in ``microbatches``.

    Each data-parallel rank passes its own shard; rows are filled by dataset index, summed over
    data-parallel ranks and shared from the last pipeline stage, so every rank returns the full table.
    With ``token_width`` (token-level losses), the response tokens' log-probs instead, in order and
    zero-padded: ``[num_examples, R, token_width]``.
    """
    for chunk in model:
        chunk.eval()
    r = microbatches[0].num_sequences_per_prompt

    def forward_step(data_iterator, chunk):
        batch = next(data_iterator)
        output = batch_nll(chunk, batch)

        def loss_func(output_tensor):
            token_logps = -output_tensor.float()
            if token_width is not None:
                tokens = response_token_logps(
                    token_logps=token_logps, mask=batch.loss_mask, width=token_width
                )
                seq = tokens.view(batch.num_prompts, r, token_width)
            else:
                seq = (token_logps * batch.loss_mask).sum(dim=-1).view(batch.num_prompts, r)
            return seq.sum() * 0, torch.tensor(1, dtype=torch.int), {"seq_logps": seq, "index": batch.index}

        return output, loss_func

    outputs = run_schedule(model, microbatches, forward_step, forward_only=True)
    for chunk in model:
        chunk.train()
    table = torch.zeros(num_examples, r, *([] if token_width is None else [token_width]), dtype=torch.float64)
    for out in outputs:
        table[out["index"].cpu()] = out["seq_logps"].to(torch.float64).cpu()
    return share_table(table).to(torch.float32)


def share_table(table: torch.Tensor) -> torch.Tensor:
    """Sum a per-rank table over data-parallel ranks and give every pipeline stage the last stage's.

    Each data-parallel rank fills its own rows (zeros elsewhere); only the last pipeline stage computed
    them. Returns a CPU tensor, identical on every rank.
    """
    if not torch.distributed.is_initialized():
        return table
    device = "cuda" if torch.cuda.is_available() else "cpu"
    table = table.to(device)
    torch.distributed.all_reduce(table, group=parallel_state.get_data_parallel_group())
    torch.distributed.broadcast(
        table, src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )  # fmt: skip
    return table.cpu()
