"""Reward-model training: the learnt RM that scores responses for online / iterative RPO.

Launch (the embedded default needs no arguments):
    CPU, one process:   nemo-rpo-train-rm
    one GPU:            nemo-rpo-train-rm model=... data.train_path=prefs.jsonl model.precision=bf16
    N processes/GPUs:   torchrun --nproc_per_node=N -m nemo_rpo.cli.train_rm parallel.tp=2 ...

The paper takes its reward model as given (Nemotron-4-340B-Reward); this trains one on our preference
formats: a Bradley-Terry loss over every ordered pair of a prompt's responses (the pairwise formats
give one pair), or a regression onto explicit rewards. The run directory (``config.yaml`` + dist
checkpoints) is what :class:`nemo_rpo.rewards.megatron_rm.MegatronRewardModel` loads; rerunning the
command resumes from its latest checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from nemo_rpo.algorithms.common import check_resume, count_skipped, maybe_resume, should_save, staged_jsonl
from nemo_rpo.config.rm_schema import RMTrainConfig
from nemo_rpo.data.batch import PreferenceBatch, collate, round_up
from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import write_jsonl
from nemo_rpo.data.preference import PreferenceDataset, load_preference_dataset
from nemo_rpo.data.sampler import GlobalBatchSampler, split_micro_batches
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.data.tokenizer import build_tokenizer
from nemo_rpo.distributed.launch import ParallelInfo, configure_cpu, init_distributed
from nemo_rpo.training.builder import save_resolved_config
from nemo_rpo.training.checkpoint import save_checkpoint
from nemo_rpo.training.logger import MetricsLogger
from nemo_rpo.training.reward_model import build_reward_trainer, rm_step_metrics, train_rm_step


@dataclass
class RMRunSummary:
    steps: int
    first: dict | None
    last: dict | None
    seconds: float


def train_reward_model(cfg: RMTrainConfig) -> RMRunSummary:
    """For t = 1..T: take a batch of prompts with K scored responses, step the RM on its pair losses."""
    started = time.perf_counter()
    configure_cpu(cfg.trainer.num_threads, cfg.trainer.keep_freed_memory)
    info = init_distributed(cfg.parallel, cfg.trainer.seed)
    if check_resume(cfg, info):  # complete already, or a resume this config cannot make: nothing is built
        return RMRunSummary(0, None, None, time.perf_counter() - started)
    tokenizer = build_tokenizer(cfg.data.tokenizer)
    dataset = _load_dataset(cfg, tokenizer, info)
    model, optimizer, scheduler = build_reward_trainer(cfg, tokenizer.vocab_size)
    sampler = GlobalBatchSampler(len(dataset), cfg.trainer.global_batch_size, info.dp_rank, info.dp_size,
                                 seed=cfg.trainer.seed, shuffle=cfg.data.shuffle, source=dataset.path,
                                 micro_batch_size=cfg.trainer.micro_batch_size)  # fmt: skip
    resumed = maybe_resume(cfg, model, optimizer, scheduler, info)
    start, skipped = int(resumed.get("step", 0)), int(resumed.get("skipped_steps", 0))
    save_resolved_config(cfg, info)  # every check has passed: a failed run leaves exp_dir as it found it
    if cfg.data.train_path is None and info.rank == 0:
        write_jsonl(_embedded_records(cfg), _embedded_path(cfg))
    logger = MetricsLogger(cfg.exp_dir, enabled=info.rank == info.world_size - 1,
                           tensorboard=cfg.logging.tensorboard, resume_step=start)  # fmt: skip
    first = last = None
    for step in range(start, cfg.trainer.max_steps):
        tick = time.perf_counter()
        microbatches = _microbatches(dataset, sampler.indices_for_step(step), cfg, tokenizer.pad_id, info)
        result = train_rm_step(model, optimizer, scheduler, microbatches, cfg.objective)
        skipped = count_skipped(result, skipped, step + 1, cfg.trainer.max_skipped_steps)
        metrics = rm_step_metrics(
            step + 1, result.report, result.grad_norm, result.lr, time.perf_counter() - tick
        )
        metrics["skipped_steps"] = skipped
        first, last = first or metrics, metrics
        if (step + 1) % cfg.trainer.log_interval == 0 or step + 1 == cfg.trainer.max_steps:
            logger.log(metrics)
            if info.rank == info.world_size - 1:
                print(_console_line(metrics, cfg.trainer.max_steps), flush=True)
        if should_save(cfg, step + 1):
            save_checkpoint(cfg.exp_dir, step + 1, model, optimizer, scheduler,
                            {"step": step + 1, "skipped_steps": skipped}, keep_last=cfg.checkpoint.keep_last)  # fmt: skip
    logger.close()
    return RMRunSummary(cfg.trainer.max_steps - start, first, last, time.perf_counter() - started)


def _load_dataset(cfg: RMTrainConfig, tokenizer, info: ParallelInfo) -> PreferenceDataset:
    stack = contextlib.ExitStack()
    path = source = cfg.data.train_path
    if path is None:  # the embedded default: the synthetic preferences with the configured K, read from a
        path = _embedded_path(cfg)  # staged copy until the run's checks pass and it is written to exp_dir
        source = stack.enter_context(staged_jsonl(_embedded_records(cfg), path))
    with stack:
        dataset = load_preference_dataset(source, cfg.data, tokenizer, k=cfg.k, max_seq_len=cfg.model.max_seq_len,
                                          require_rewards=cfg.objective == "regression")  # fmt: skip
    dataset.path = str(path)
    if cfg.objective == "regression" and not dataset.has_rewards:
        raise DataError(dataset.path, None, "rewards", f"{dataset.format} data has no rewards; "
                        "objective=regression needs them (use bradley_terry, or the native/nemo_aligner format)")  # fmt: skip
    if info.rank == 0:
        print(f"data: {dataset.path} ({dataset.format}): {dataset.stats.summary()}")
    return dataset


def _embedded_path(cfg: RMTrainConfig) -> Path:
    return Path(cfg.exp_dir) / "data" / f"synthetic_k{cfg.k}.jsonl"


def _embedded_records(cfg: RMTrainConfig) -> list[dict]:
    return make_synthetic_preferences(512, cfg.k, seed=0)


def _microbatches(
    dataset, indices, cfg: RMTrainConfig, pad_id: int, info: ParallelInfo
) -> list[PreferenceBatch]:
    """This rank's prompts for a step, as micro-batches padded to one width (pipeline p2p needs it)."""
    examples = [dataset[i] for i in indices]
    longest = max(len(ex.prompt_ids) + max(map(len, ex.response_ids)) for ex in examples)
    width = max(longest, min(round_up(longest), cfg.model.max_seq_len))
    return [
        collate([dataset[i] for i in chunk], pad_id, pad_to=width).to(info.device)
        for chunk in split_micro_batches(indices, cfg.trainer.micro_batch_size)
    ]


def _console_line(metrics: dict, max_steps: int) -> str:
    def fmt(key: str, spec: str) -> str:
        value = metrics.get(key)
        return "nan" if value is None else format(value, spec)

    return (
        f"step {metrics['step']:>5d}/{max_steps} | loss {fmt('loss', '.4f')} | acc {fmt('accuracy', '.3f')} | "
        f"score {fmt('score_mean', '.3f')} ± {fmt('score_std', '.3f')} | lr {fmt('lr', '.2e')} | "
        f"grad_norm {fmt('grad_norm', '.3f')} | {fmt('tokens_per_s', '.0f')} tok/s"
    )
