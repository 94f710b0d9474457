"""Offline RPO (Algorithm 1): a fixed dataset of K responses per prompt with explicit rewards.

Launch (the embedded default needs no arguments):
    CPU, one process:   nemo-rpo-train
    one GPU:            nemo-rpo-train model=... data.train_path=train.jsonl model.precision=bf16
    N processes/GPUs:   torchrun --nproc_per_node=N -m nemo_rpo.train parallel.tp=2 ...

Departures from the paper's pseudocode: batches are drawn as deterministic epochs of the dataset
(not i.i.d. samples) so that a restart resumes exactly; reference log-probs are computed once up
front (the reference is the initial policy, line 1) instead of by a second resident model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from nemo_rpo.config.schema import RPOConfig
from nemo_rpo.data.batch import PreferenceBatch, collate
from nemo_rpo.data.jsonl import write_jsonl
from nemo_rpo.data.preference import PreferenceDataset, add_kl_pairs, load_preference_dataset
from nemo_rpo.data.sampler import GlobalBatchSampler, split_micro_batches
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.data.tokenizer import build_tokenizer
from nemo_rpo.distributed.launch import ParallelInfo, init_distributed, set_num_threads
from nemo_rpo.losses import PRESETS
from nemo_rpo.training import reference
from nemo_rpo.training.builder import build_policy, save_resolved_config
from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from nemo_rpo.training.logger import MetricsLogger, console_line, step_metrics
from nemo_rpo.training.step import sequence_logps, train_step


@dataclass
class RunSummary:
    steps: int
    first: dict | None
    last: dict | None
    seconds: float


def train_offline(cfg: RPOConfig) -> RunSummary:
    """Alg. 1: for t = 1..T, sample a batch, compute the RPO objective, update the policy."""
    started = time.perf_counter()
    set_num_threads(cfg.trainer.num_threads)
    info = init_distributed(cfg.parallel, cfg.trainer.seed)
    save_resolved_config(cfg, info)
    tokenizer = build_tokenizer(cfg.data.tokenizer)
    dataset = _load_dataset(cfg, tokenizer, info)
    model, optimizer, scheduler = build_policy(cfg, tokenizer.vocab_size)
    sampler = GlobalBatchSampler(len(dataset), cfg.trainer.global_batch_size, info.dp_rank, info.dp_size,
                                 seed=cfg.trainer.seed, shuffle=cfg.data.shuffle, source=dataset.path)  # fmt: skip
    ref_logps = _reference_logps(cfg, model, dataset, tokenizer.pad_id, info)  # at the initial weights
    start = _maybe_resume(cfg, model, optimizer, scheduler, info)
    logger = MetricsLogger(cfg.exp_dir, enabled=info.rank == info.world_size - 1,
                           tensorboard=cfg.logging.tensorboard, resume_step=start)  # fmt: skip
    progress = _progress_bar(cfg, info, start)
    first = last = None
    for step in range(start, cfg.trainer.max_steps):
        tick = time.perf_counter()
        microbatches = _microbatches(dataset, sampler.indices_for_step(step), cfg, tokenizer.pad_id, info)
        result = train_step(model, optimizer, scheduler, microbatches, _lookup(ref_logps), cfg.loss)
        metrics = step_metrics(
            step + 1, result.report, result.grad_norm, result.lr, time.perf_counter() - tick
        )
        first, last = first or metrics, metrics
        if (step + 1) % cfg.trainer.log_interval == 0 or step + 1 == cfg.trainer.max_steps:
            logger.log(metrics)
            _print(progress, info, console_line(metrics, cfg.trainer.max_steps))
        if progress is not None:
            progress.update(1)
        if _should_save(cfg, step + 1):
            save_checkpoint(cfg.exp_dir, step + 1, model, optimizer, scheduler,
                            {"step": step + 1}, keep_last=cfg.checkpoint.keep_last)  # fmt: skip
    logger.close()
    if progress is not None:
        progress.close()
    return RunSummary(cfg.trainer.max_steps - start, first, last, time.perf_counter() - started)


def _load_dataset(cfg: RPOConfig, tokenizer, info: ParallelInfo) -> PreferenceDataset:
    path = cfg.data.train_path
    if path is None:  # the embedded default: synthetic preferences with the configured K
        path = f"{cfg.exp_dir}/data/synthetic_k{cfg.k}.jsonl"
        if info.rank == 0:
            write_jsonl(make_synthetic_preferences(512, cfg.k, seed=0), path)
        torch.distributed.barrier()
    dataset = load_preference_dataset(path, cfg.data, tokenizer, k=cfg.k, max_seq_len=cfg.model.max_seq_len)
    info_loss = PRESETS[cfg.loss.name]
    if info_loss.needs_rewards or cfg.loss.sft_loss_weight > 0 and dataset.has_rewards:
        dataset.require_rewards(cfg.loss.name)
    if info_loss.needs_kl_pairs:
        dataset.examples = add_kl_pairs(dataset.examples, max_seq_len=cfg.model.max_seq_len)
    if info.rank == 0:
        print(f"data: {dataset.path} ({dataset.format}): {dataset.stats.summary()}")
    return dataset


def _microbatches(dataset, indices, cfg: RPOConfig, pad_id: int, info: ParallelInfo) -> list[PreferenceBatch]:
    """This rank's prompts for a step, as micro-batches padded to one width (pipeline p2p needs it)."""
    examples = [dataset[i] for i in indices]
    longest = max(
        len(ex.prompt_ids) + max(map(len, ex.response_ids + [ex.kl_response_ids or []])) for ex in examples
    )
    width = -(-longest // 8) * 8
    return [
        collate([dataset[i] for i in chunk], pad_id, pad_to=width).to(info.device)
        for chunk in split_micro_batches(indices, cfg.trainer.micro_batch_size)
    ]


def _reference_logps(cfg: RPOConfig, model, dataset, pad_id: int, info: ParallelInfo) -> torch.Tensor | None:
    if not PRESETS[cfg.loss.name].uses_reference:
        return None
    key = reference.fingerprint(dataset.examples, {"model": vars(cfg.model), "seed": cfg.trainer.seed})
    cached = reference.load_cached(cfg.exp_dir, key)
    if cached is not None:
        return cached
    if find_latest_checkpoint(cfg.exp_dir) is not None:
        raise RuntimeError(f"{cfg.exp_dir}: a checkpoint exists but {reference.CACHE_NAME} is missing; "
                           "the reference (initial weights) cannot be recomputed from trained weights")  # fmt: skip
    shard = list(range(info.dp_rank, len(dataset), info.dp_size))
    microbatches = _microbatches(dataset, shard, cfg, pad_id, info)
    logps = sequence_logps(model, microbatches, len(dataset))
    if info.rank == 0:
        reference.save_cached(cfg.exp_dir, key, logps)
    return logps


def _lookup(ref_logps: torch.Tensor | None):
    def lookup(batch: PreferenceBatch) -> torch.Tensor | None:
        return None if ref_logps is None else ref_logps[batch.index.cpu()].to(batch.input_ids.device)

    return lookup


def _maybe_resume(cfg: RPOConfig, model, optimizer, scheduler, info: ParallelInfo) -> int:
    path = find_latest_checkpoint(cfg.exp_dir) if cfg.checkpoint.resume else None
    if path is None:
        return 0
    extra = load_checkpoint(path, model, optimizer, scheduler)  # weights, optimizer, scheduler, RNG
    if info.rank == 0:
        print(f"resumed from {path} at step {extra['step']}")
    return int(extra["step"])


def _should_save(cfg: RPOConfig, step: int) -> bool:
    interval = cfg.checkpoint.save_interval
    return step == cfg.trainer.max_steps or (interval > 0 and step % interval == 0)


def _progress_bar(cfg: RPOConfig, info: ParallelInfo, start: int):
    if info.rank != 0 or not cfg.logging.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.trainer.max_steps,
        initial=start,
        desc="train",
        dynamic_ncols=True,
        leave=False,
        disable=None,
    )


def _print(progress, info: ParallelInfo, line: str) -> None:
    if info.rank != info.world_size - 1:
        return
    if progress is not None:
        progress.write(line)
    else:
        print(line, flush=True)
