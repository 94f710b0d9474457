"""Offline RPO (Algorithm 1) and iterative offline RPO (Algorithm 3).

Launch (the embedded default needs no arguments):
    CPU, one process:   nemo-rpo-train
    one GPU:            nemo-rpo-train model=... data.train_path=train.jsonl model.precision=bf16
    N processes/GPUs:   torchrun --nproc_per_node=N -m nemo_rpo.train parallel.tp=2 ...

Departures from the paper's pseudocode: batches are drawn as deterministic epochs of the dataset
(not i.i.d. samples) so that a restart resumes exactly; reference log-probs are computed once per
iteration up front (the reference is the policy at the iteration's start) instead of by a second
resident model. With ``schedule.iterations=I > 1``, iteration i >= 2 regenerates the data: K samples
per prompt from the current policy, scored by the reward model (``schedule.pairs``), written to
``<exp_dir>/iterations/iter_<i>/data.jsonl`` with its reference log-probs beside it.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from megatron.core import parallel_state

from nemo_rpo.algorithms.common import (
    Iteration,
    PolicyAlgorithm,
    RunSummary,
    init_weights_from,
    iteration_at,
    microbatches,
    read_preferences,
    save_run_files,
    table_lookup,
)  # fmt: skip
from nemo_rpo.algorithms.rollout import rollout
from nemo_rpo.algorithms.trainer import train
from nemo_rpo.config.schema import RPOConfig
from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import write_jsonl
from nemo_rpo.data.preference import PreferenceDataset, add_kl_pairs
from nemo_rpo.data.prompts import prompts_from_texts
from nemo_rpo.data.sampler import GlobalBatchSampler
from nemo_rpo.data.tokenizer import build_tokenizer
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.losses import LOSSES
from nemo_rpo.models.gpt import shares_prompt
from nemo_rpo.models.lora import adapters_disabled
from nemo_rpo.training import reference
from nemo_rpo.training.builder import build_policy
from nemo_rpo.training.checkpoint import find_latest_checkpoint
from nemo_rpo.training.frozen import AdapterReference
from nemo_rpo.training.step import StepResult, sequence_logps, train_step


def train_offline(cfg: RPOConfig) -> RunSummary:
    """Alg. 1: for t = 1..T, sample a batch, compute the RPO objective, update the policy (Alg. 3: I times)."""
    return train(cfg, Offline(cfg))


class Offline(PolicyAlgorithm):
    """Offline RPO's part of the trainer's loop: a fixed dataset, its reference table computed once per
    iteration, and (Alg. 3) each later iteration's data regenerated from the policy."""

    def build(self, info: ParallelInfo) -> None:
        cfg = self.cfg
        self.info, self.tokenizer = info, build_tokenizer(cfg.data.tokenizer)
        self.dataset = _load_dataset(cfg, self.tokenizer, info, cfg.data.train_path)
        _sampler(cfg, self.dataset, info, 0)  # a dataset smaller than one global batch fails before any write
        self.model, self.optimizer, self.scheduler = build_policy(cfg, self.tokenizer.vocab_size)
        # e.g. the SFT policy; it is also the reference
        base = init_weights_from(cfg, self.model, info, self.optimizer)
        if base is not None:  # LoRA: the reference is the policy with its adapters off
            self.adapter_ref = AdapterReference(self.model, self.optimizer, base, exp_dir=cfg.exp_dir,
                                                seed=cfg.trainer.seed)  # fmt: skip
        self.share_prompt = shares_prompt(cfg.model)

    def start(self, step: int) -> None:
        # The trainer resumed before this reference pass: a checkpoint of another model shape fails first,
        # and a resumed run reads the reference cache written at the initial weights (never recomputed).
        self.first_step, self.iteration = step, None
        self.ref_logps = _reference_logps(self.cfg, self.model, self.dataset, self.tokenizer.pad_id, self.info,
                                          self.cfg.exp_dir, resumed=step > 0)  # fmt: skip
        save_run_files(self.cfg, self.info)  # every check has passed: a failed run leaves exp_dir as it was
        self.judge_before(step)

    def step(self, step: int) -> tuple[StepResult, dict]:
        cfg, it = self.cfg, iteration_at(self.plan, step)
        if self.iteration != it:
            if it.index > 0:  # Alg. 3: new data from the current policy; reference := current policy
                if self.adapter_ref is not None and self.first_step <= it.start:  # LoRA: merge the adapters
                    self.adapter_ref.update(self.model, it.start)
                self.dataset, self.ref_logps = _regenerate(cfg, it, self.model, self.tokenizer, self.dataset,
                                                           self.info, resumed=self.first_step > it.start)  # fmt: skip
            self.sampler, self.iteration = _sampler(cfg, self.dataset, self.info, it.index), it
        examples = [self.dataset[i] for i in self.sampler.indices_for_step(step - it.start)]
        micro = microbatches(examples, cfg.trainer.micro_batch_size, self.tokenizer.pad_id, self.info.device,
                             share_prompt=self.share_prompt)  # fmt: skip
        result = train_step(
            self.model, self.optimizer, self.scheduler, micro, table_lookup(self.ref_logps), it.loss
        )
        return result, ({"iteration": it.index} if cfg.schedule.iterations > 1 else {})

    def save_now(self, step: int) -> bool:
        return self.cfg.schedule.iterations > 1 and self.ends_iteration(step)


def _sampler(
    cfg: RPOConfig, dataset: PreferenceDataset, info: ParallelInfo, iteration: int
) -> GlobalBatchSampler:
    return GlobalBatchSampler(len(dataset), cfg.trainer.global_batch_size, info.dp_rank, info.dp_size,
                              seed=cfg.trainer.seed + iteration, shuffle=cfg.data.shuffle, source=dataset.path,
                              micro_batch_size=cfg.trainer.micro_batch_size)  # fmt: skip


def _load_dataset(
    cfg: RPOConfig, tokenizer, info: ParallelInfo, path: str | None, k: int | None = None
) -> PreferenceDataset:
    info_loss = LOSSES[cfg.loss.name]
    dataset = read_preferences(cfg, tokenizer, path, k=k or cfg.k, require_rewards=info_loss.needs_rewards)
    if info_loss.needs_rewards:
        dataset.require_rewards(cfg.loss.name)
    if info_loss.needs_kl_pairs:
        if len(dataset) < 2:
            raise DataError(dataset.path, None, "records",
                            f"loss {cfg.loss.name} pairs each example with another one's response: needs at least 2 "
                            f"examples, got {len(dataset)}")  # fmt: skip
        dataset.examples = add_kl_pairs(dataset.examples, max_seq_len=cfg.model.max_seq_len)
    if info.rank == 0:
        print(f"data: {dataset.path} ({dataset.format}): {dataset.stats.summary()}")
    return dataset


def _reference_logps(
    cfg: RPOConfig,
    model,
    dataset,
    pad_id: int,
    info: ParallelInfo,
    cache_dir: str | Path,
    resumed: bool = False,
) -> torch.Tensor | None:
    """Reference log-probs of every response at the current weights, cached in ``cache_dir``."""
    if not LOSSES[cfg.loss.name].uses_reference:
        return None
    # Token-level losses keep each response token's log-prob (a [N, R, width] table), others the sums.
    width = None
    if LOSSES[cfg.loss.name].token_level:
        width = max(len(r) for ex in dataset.examples for r in ex.sequence_responses)
    # the reference is the base model (adapters off): model.lora does not change it
    model_fields = {k: v for k, v in vars(cfg.model).items() if k != "lora"}
    extra = {"model": model_fields, "seed": cfg.trainer.seed, **({"token_width": width} if width else {})}
    key = reference.fingerprint(dataset.examples, extra)
    cached = reference.load_cached(str(cache_dir), key)
    if cached is not None:
        return cached
    if resumed or (str(cache_dir) == cfg.exp_dir and find_latest_checkpoint(cfg.exp_dir) is not None):
        raise RuntimeError(f"{cache_dir}: a checkpoint exists but {reference.CACHE_NAME} is missing; the "
                           "reference (the policy at the iteration's start) cannot be recomputed from trained weights")  # fmt: skip
    shard = [dataset[i] for i in range(info.dp_rank, len(dataset), info.dp_size)]
    with adapters_disabled(model):  # a LoRA policy's reference is its base model
        logps = _sequence_logps(cfg, model, shard, pad_id, info, len(dataset), width)
    if info.rank == 0:
        reference.save_cached(str(cache_dir), key, logps)
    torch.distributed.barrier()
    return logps


def _sequence_logps(
    cfg: RPOConfig, model, shard, pad_id: int, info: ParallelInfo, num: int, width
) -> torch.Tensor:
    return sequence_logps(
        model,
        microbatches(
            shard,
            cfg.trainer.micro_batch_size,
            pad_id,
            info.device,
            fill=True,
            share_prompt=shares_prompt(cfg.model),
        ),  # fmt: skip
        num,
        token_width=width,
    )


def _regenerate(cfg: RPOConfig, it: Iteration, model, tokenizer, previous: PreferenceDataset, info: ParallelInfo,
                *, resumed: bool) -> tuple[PreferenceDataset, torch.Tensor | None]:  # fmt: skip
    """Alg. 3, lines 2-4 for iteration ``it``: sample, score, build pairs, write; then reference log-probs."""
    from nemo_rpo.generation import MegatronGenerator, sampling_generator
    from nemo_rpo.rewards import build_reward_model

    folder = Path(cfg.exp_dir) / "iterations" / f"iter_{it.index}"
    path = folder / "data.jsonl"
    pairwise = cfg.schedule.pairs == "best_vs_random"
    if not path.exists():
        texts = sorted({tokenizer.decode(ex.prompt_ids) for ex in previous.examples})
        prompts = prompts_from_texts(texts, tokenizer, max_prompt_len=cfg.data.max_prompt_len)
        mine = prompts[info.dp_rank :: info.dp_size]
        generator = MegatronGenerator(model, cfg.generation, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                      vocab_size=tokenizer.vocab_size)  # fmt: skip
        samples = max(cfg.k, 4) if pairwise else cfg.k
        draws = sampling_generator(cfg.trainer.seed + 7919 * info.dp_rank, 1_000_000 + it.index)
        batch, _, _ = rollout(generator, build_reward_model(cfg.reward), tokenizer, mine, samples, draws, 0)
        records, rng = [], random.Random(cfg.trainer.seed + it.index)
        for p, row, text_row in zip(mine, batch.rewards.tolist(), _rows(batch.texts, samples)):
            if any(not t.strip() for t in text_row):
                continue  # an empty sample cannot be trained on; counted below
            if pairwise:
                best = max(range(samples), key=row.__getitem__)
                other = rng.choice([j for j in range(samples) if j != best])
                text_row, row = [text_row[best], text_row[other]], [row[best], row[other]]
            records.append({"prompt": p.text, "responses": text_row, "rewards": row})
        gathered = [None] * info.dp_size
        torch.distributed.all_gather_object(gathered, records, group=parallel_state.get_data_parallel_group())
        if info.rank == 0:
            merged = [r for part in gathered for r in part]
            dropped = len(prompts) - len(merged)
            print(f"iteration {it.index + 1}: regenerated {len(merged)} prompts x {samples} samples "
                  f"({dropped} dropped: empty sample)", flush=True)  # fmt: skip
            tmp = folder / "data.jsonl.tmp"
            write_jsonl(merged, tmp)
            tmp.replace(path)
        torch.distributed.barrier()
    dataset = _load_dataset(cfg, tokenizer, info, str(path))
    return dataset, _reference_logps(cfg, model, dataset, tokenizer.pad_id, info, folder, resumed=resumed)


def _rows(texts: list[str], k: int) -> list[list[str]]:
    return [texts[i : i + k] for i in range(0, len(texts), k)]
