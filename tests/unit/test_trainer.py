"""The one training loop (nemo_rpo.algorithms.trainer.train) with a scripted algorithm: what it logs,
counts, saves and resumes, independent of any algorithm's numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nemo_rpo.algorithms.trainer import train
from nemo_rpo.config.schema import (
    CheckpointConfig,
    LoggingConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RPOConfig,
    TrainerConfig,
)  # fmt: skip
from nemo_rpo.training.step import NonFiniteStepsError, StepResult


class Scripted:
    """Steps that return a scripted result (``bad``: non-finite) without touching the model."""

    def __init__(self, cfg: RPOConfig, bad: set[int]) -> None:
        self.cfg, self.bad, self.events = cfg, bad, []

    def build(self, info) -> None:  # noqa: ANN001
        from nemo_rpo.training.builder import build_policy

        self.model, self.optimizer, self.scheduler = build_policy(self.cfg, 64)
        self.events.append("build")

    def start(self, step: int) -> None:
        self.events.append(("start", step))

    def step(self, step: int) -> tuple[StepResult, dict]:
        from nemo_rpo.algorithms.common import microbatches, table_lookup
        from nemo_rpo.data.preference import PreferenceExample
        from nemo_rpo.training.step import train_step

        self.events.append(step)
        examples = [PreferenceExample(i, [1, 5 + i, 7], [[8, 9, 2], [10, 2], [11, 12, 2], [13, 2]], [1.0, 0.5, 0.2, 0.0])
                    for i in range(2)]  # fmt: skip
        micro = microbatches(examples, 2, pad_id=0, device="cpu")
        train_step(
            self.model, self.optimizer, self.scheduler, micro, table_lookup(None), self.cfg.loss
        )  # real state
        bad = step in self.bad
        return StepResult({"loss": 10.0 - step}, 0.5, 0.1, skipped=bad, non_finite=bad), {"extra": step}

    def metrics(self, step: int, result: StepResult, seconds: float) -> dict:
        return {"step": step, "loss": result.report["loss"]}

    def console_line(self, metrics: dict) -> str:
        return f"line {metrics['step']}"

    def save_now(self, step: int) -> bool:
        return step == 3

    def checkpoint_extra(self, step: int) -> dict:
        return {"where": step}

    def finish(self) -> None:
        self.events.append("finish")


def _cfg(tmp_path, max_skipped: int = 1) -> RPOConfig:
    return RPOConfig(exp_dir=str(tmp_path / "run"), model=ModelConfig(hidden_size=32, max_seq_len=16),
                     optim=OptimConfig(warmup_steps=0), loss=LossConfig(name="sft"),
                     trainer=TrainerConfig(max_steps=6, global_batch_size=2, micro_batch_size=2, log_interval=2,
                                           max_skipped_steps=max_skipped),
                     checkpoint=CheckpointConfig(save_interval=0),
                     logging=LoggingConfig(tensorboard=False, progress_bar=False))  # fmt: skip


def _logged(cfg: RPOConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.exp_dir) / "metrics.jsonl").read_text().splitlines()]


def test_logs_counts_skips_saves_and_resumes(tmp_path, capsys, one_process):
    """Every 2nd step logged (skipped count and the algorithm's extras in each line), a checkpoint where
    the algorithm asks (step 3, with its state) and at the end; a rerun resumes at the latest checkpoint."""
    cfg = _cfg(tmp_path)
    first = Scripted(cfg, bad={1})
    summary = train(cfg, first)
    assert first.events == ["build", ("start", 0), 0, 1, 2, 3, 4, 5, "finish"]
    assert (summary.steps, summary.first["step"], summary.last["step"]) == (6, 1, 6)
    assert _logged(cfg) == [
        {"step": s, "loss": 11.0 - s, "skipped_steps": 1, "extra": s - 1} for s in (2, 4, 6)
    ]
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("line")] == [
        "line 2",
        "line 4",
        "line 6",
    ]
    ckpts = tmp_path / "run" / "checkpoints"
    saved = json.loads((ckpts / "step_00000003" / "extra.json").read_text())
    assert saved == {"step": 3, "where": 2, "skipped_steps": 1}
    assert json.loads((ckpts / "step_00000006" / "extra.json").read_text())["where"] == 5

    shutil.rmtree(ckpts / "step_00000006")  # back to step 3
    (ckpts / "latest").unlink()
    again = Scripted(cfg, bad=set())
    assert train(cfg, again).steps == 3
    assert again.events == ["build", ("start", 3), 3, 4, 5, "finish"]
    assert [(r["step"], r["skipped_steps"]) for r in _logged(cfg)] == [
        (2, 1),
        (4, 1),
        (6, 1),
    ]  # count restored

    done = Scripted(cfg, bad=set())
    assert train(cfg, done).steps == 0 and done.events == []  # complete: nothing is built


def test_too_many_non_finite_steps_stop_before_saving(tmp_path, one_process):
    cfg = _cfg(tmp_path, max_skipped=1)
    with pytest.raises(NonFiniteStepsError, match="2 steps had a non-finite loss .* step 3"):
        train(cfg, Scripted(cfg, bad={0, 2}))
    assert not (tmp_path / "run" / "checkpoints").exists()  # step 3 would have been saved
