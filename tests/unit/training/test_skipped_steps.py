"""Non-finite steps: no update is applied, they are counted, and too many stop the run."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_rpo.algorithms.common import count_skipped, microbatches, table_lookup
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.training.logger import MetricsLogger
from nemo_rpo.training.step import NonFiniteStepsError, StepResult, all_finite, train_step


def _result(non_finite: bool) -> StepResult:
    return StepResult(report={}, grad_norm=float("nan"), lr=0.1, skipped=non_finite, non_finite=non_finite)


def test_count_skipped_counts_only_non_finite_steps_and_stops_past_the_limit():
    assert count_skipped(_result(False), 0, step=1, limit=2) == 0
    assert count_skipped(_result(True), 0, step=2, limit=2) == 1
    assert count_skipped(_result(True), 1, step=3, limit=2) == 2
    with pytest.raises(
        NonFiniteStepsError, match=r"max_skipped_steps: 3 steps .* step 7\), more than the limit of 2"
    ):
        count_skipped(_result(True), 2, step=7, limit=2)
    with pytest.raises(NonFiniteStepsError):
        count_skipped(_result(True), 0, step=1, limit=0)  # 0: any non-finite step is fatal


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_sees_every_nan_and_infinity(dtype):
    """One NaN/+inf/-inf anywhere (first, in a vectorised middle, the scalar tail) makes it False."""
    t = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert all_finite(t)
    assert all_finite(t[:0])
    for bad in (float("nan"), float("inf"), float("-inf")):
        for at in (0, 517_001, t.numel() - 1):
            poisoned = t.clone()
            poisoned[at] = bad
            assert not all_finite(poisoned), (bad, at)
            assert torch.isfinite(poisoned).all().item() is False  # the reference answer agrees


def test_nan_reference_fixture_poisons_only_the_named_steps(monkeypatch, nan_reference_at):
    from nemo_rpo.algorithms import offline

    seen = []
    monkeypatch.setattr(offline, "train_step", lambda *args: seen.append(args[4](batch)))
    nan_reference_at(3, 5)
    table = torch.arange(8.0).view(4, 2)
    batch = type("B", (), {"index": torch.tensor([1, 2]), "input_ids": torch.zeros(2, 3)})()
    for _ in range(6):
        offline.train_step(None, None, None, [], table_lookup(table), None)
    assert [bool(torch.isnan(rows).all()) for rows in seen] == [False, False, True, False, True, False]
    assert torch.equal(seen[0], table[1:3])  # the table's rows by each batch's index


def test_metrics_truncation_drops_a_torn_last_line(tmp_path):
    """A run killed mid-write leaves half a line; the resumed run drops it with the steps after its checkpoint."""
    lines = [json.dumps({"step": s, "loss": 0.5}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    MetricsLogger(str(tmp_path), enabled=True, tensorboard=False, resume_step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(lines[:2]) + "\n"


def test_a_non_finite_step_changes_no_parameter_or_optimizer_state(world1):
    """Megatron's fp32 optimizer would apply a NaN update (it checks nothing without a loss scaler)."""
    from nemo_rpo.training.builder import build_policy

    cfg, info = world1
    model, optimizer, scheduler = build_policy(cfg, vocab_size=64)
    examples = [PreferenceExample(i, [1, 5 + i, 7], [[8, 9, 2], [10, 2], [11, 12, 2], [13, 2]], [1.0, 0.5, 0.2, 0.0])
                for i in range(2)]  # fmt: skip
    micro = microbatches(examples, 2, pad_id=0, device=info.device)
    ref = torch.zeros(2, 4)

    def snapshot():
        params = [p.detach().clone() for p in model[0].parameters()]
        return params, json.dumps(optimizer.state_dict()["param_groups"], default=str), scheduler.num_steps

    before = snapshot()
    nan_ref = lambda batch: torch.full((batch.index.numel(), 4), float("nan"))  # noqa: E731 - a NaN loss
    result = train_step(model, optimizer, scheduler, micro, nan_ref, cfg.loss)
    assert result.non_finite and result.skipped
    after = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0])) and before[1:] == after[1:]
    assert not optimizer.state_dict()["state"]  # Adam never stepped

    result = train_step(model, optimizer, scheduler, micro, table_lookup(ref), cfg.loss)
    assert not result.non_finite and not result.skipped
    assert not all(torch.equal(a, b) for a, b in zip(before[0], snapshot()[0]))


def test_reward_model_step_skips_a_non_finite_loss(world1):
    """The RM trainer has the same guard: a NaN reward (regression) leaves the weights unchanged."""
    from nemo_rpo.config.rm_schema import RMTrainConfig
    from nemo_rpo.training.reward_model import build_reward_trainer, train_rm_step

    cfg, info = world1
    rm_cfg = RMTrainConfig(objective="regression", model=cfg.model, optim=cfg.optim, trainer=cfg.trainer)
    model, optimizer, scheduler = build_reward_trainer(rm_cfg, vocab_size=64)
    examples = [PreferenceExample(i, [1, 5 + i, 7], [[8, 9, 2], [10, 2], [11, 12, 2], [13, 2]], [1.0, 0.5, 0.2, 0.0])
                for i in range(2)]  # fmt: skip
    micro = microbatches(examples, 2, pad_id=0, device=info.device)
    before = [p.detach().clone() for p in model[0].parameters()]
    micro[0].rewards[0, 1] = float("nan")
    result = train_rm_step(model, optimizer, scheduler, micro, "regression")
    assert result.non_finite and result.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model[0].parameters()))
    micro[0].rewards[0, 1] = 0.5
    result = train_rm_step(model, optimizer, scheduler, micro, "regression")
    assert not result.non_finite and not result.skipped
    assert not all(torch.equal(a, b) for a, b in zip(before, model[0].parameters()))
