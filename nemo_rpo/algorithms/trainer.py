"""The one training loop: init, resume, logging, skip-on-non-finite, saving and progress for every algorithm.

torchtitan's ``Trainer.train()`` is the model: the loop's plumbing lives here once, and offline RPO
(Alg. 1/3), online RPO (Alg. 2/4) and reward-model training hand it only what differs, as an
:class:`Algorithm`: what they build (data, model, the reference), where each step's batch comes from
and how the step is taken, and which extra numbers they log.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from nemo_rpo.algorithms.common import (
    RunSummary,
    check_resume,
    count_skipped,
    emit,
    maybe_resume,
    progress_bar,
    should_save,
)  # fmt: skip
from nemo_rpo.distributed.launch import ParallelInfo, configure_cpu, init_distributed
from nemo_rpo.training.checkpoint import save_checkpoint
from nemo_rpo.training.logger import MetricsLogger
from nemo_rpo.training.step import StepResult


class Algorithm(Protocol):
    """What an algorithm hands :func:`train`. ``model``, ``optimizer`` and ``scheduler`` exist after ``build``."""

    model: list
    optimizer: Any
    scheduler: Any

    def build(self, info: ParallelInfo) -> None:
        """Data, model, optimizer, scheduler (and any warm-up); nothing is written to ``exp_dir`` yet."""

    def start(self, step: int) -> None:
        """After the resume to ``step``: the reference, then the run's files (every check has passed)."""

    def step(self, step: int) -> tuple[StepResult, dict]:
        """Take 0-based step ``step``: its batch, its optimizer step; ``(result, extra metrics to log)``."""

    def metrics(self, step: int, result: StepResult, seconds: float) -> dict:
        """The logged metrics of 1-based ``step`` from its summed report."""

    def console_line(self, metrics: dict) -> str:
        """The printed line of a logged step."""

    def save_now(self, step: int) -> bool:
        """Save after 1-based ``step`` besides ``checkpoint.save_interval`` (e.g. at an iteration's end)."""

    def checkpoint_extra(self, step: int) -> dict:
        """State of the algorithm to save with the checkpoint after 0-based ``step`` (JSON)."""

    def finish(self) -> None:
        """After the last step (e.g. the held-out evaluation)."""


def train(cfg, algorithm: Algorithm) -> RunSummary:
    """Run ``algorithm`` for ``trainer.max_steps`` steps, resuming from ``exp_dir``'s latest checkpoint.

    ``cfg`` is any run config with ``exp_dir``, ``parallel``, ``trainer``, ``optim``, ``checkpoint`` and
    ``logging`` (policy or reward-model training).
    """
    started = time.perf_counter()
    configure_cpu(cfg.trainer.num_threads, cfg.trainer.keep_freed_memory, cfg.trainer.deterministic)
    info = init_distributed(cfg.parallel, cfg.trainer.seed)
    if check_resume(cfg, info):  # complete already, or a resume this config cannot make: nothing is built
        return RunSummary(0, None, None, time.perf_counter() - started)
    algorithm.build(info)
    resumed = maybe_resume(cfg, algorithm.model, algorithm.optimizer, algorithm.scheduler, info)
    start, skipped = int(resumed.get("step", 0)), int(resumed.get("skipped_steps", 0))
    algorithm.start(start)
    logger = MetricsLogger(cfg.exp_dir, enabled=info.rank == info.world_size - 1,
                           tensorboard=cfg.logging.tensorboard, resume_step=start)  # fmt: skip
    progress = progress_bar(cfg, info, start)
    first = last = None
    for step in range(start, cfg.trainer.max_steps):
        tick = time.perf_counter()
        result, extra = algorithm.step(step)
        skipped = count_skipped(result, skipped, step + 1, cfg.trainer.max_skipped_steps)
        metrics = algorithm.metrics(step + 1, result, time.perf_counter() - tick)
        metrics["skipped_steps"] = skipped
        metrics.update(extra)
        first, last = first or metrics, metrics
        if (step + 1) % cfg.trainer.log_interval == 0 or step + 1 == cfg.trainer.max_steps:
            logger.log(metrics)
            emit(progress, info, algorithm.console_line(metrics))
        if progress is not None:
            progress.update(1)
        if should_save(cfg, step + 1) or algorithm.save_now(step + 1):
            save_checkpoint(cfg.exp_dir, step + 1, algorithm.model, algorithm.optimizer, algorithm.scheduler,
                            {"step": step + 1, **algorithm.checkpoint_extra(step), "skipped_steps": skipped},
                            keep_last=cfg.checkpoint.keep_last)  # fmt: skip
    logger.close()
    if progress is not None:
        progress.close()
    algorithm.finish()
    return RunSummary(cfg.trainer.max_steps - start, first, last, time.perf_counter() - started)
