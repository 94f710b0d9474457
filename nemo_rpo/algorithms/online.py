"""Online RPO (Algorithm 2) and iterative online RPO (Algorithm 4).

Each step: sample a batch of prompts, generate K responses per prompt from the current policy, score
them with the reward model, compute reference log-probs with the frozen reference, and take one
optimizer step on the configured loss (any metric or preset; ``rpo_sqloo`` with ``eta=1`` is RLOO).
With ``schedule.iterations=I`` the reference becomes the current policy at the start of every iteration.

Launch: ``nemo-rpo-train mode=online`` (the embedded default: the synthetic string tasks, judged by
``nemo_rpo.rewards.judges``, after a short SFT warm-up of the randomly initialised tiny model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch
from megatron.core import parallel_state

from nemo_rpo.algorithms.common import (
    PolicyAlgorithm,
    RunSummary,
    init_weights_from,
    iteration_at,
    microbatches,
    staged_jsonl,
    table_lookup,
)  # fmt: skip
from nemo_rpo.algorithms.rollout import rollout
from nemo_rpo.algorithms.trainer import train
from nemo_rpo.config.schema import RPOConfig
from nemo_rpo.data.batch import round_up
from nemo_rpo.data.jsonl import write_jsonl
from nemo_rpo.data.preference import load_preference_dataset
from nemo_rpo.data.prompts import Prompt, load_prompts, prompts_from_texts
from nemo_rpo.data.sampler import GlobalBatchSampler
from nemo_rpo.data.synthetic import demonstrations, make_synthetic_preferences
from nemo_rpo.data.tokenizer import build_tokenizer
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.generation import MegatronGenerator, sampling_generator
from nemo_rpo.losses import LOSSES
from nemo_rpo.models.gpt import shares_prompt
from nemo_rpo.rewards import build_reward_model
from nemo_rpo.training.builder import build_policy_model, save_resolved_config
from nemo_rpo.training.checkpoint import find_latest_checkpoint
from nemo_rpo.training.frozen import AdapterReference, FrozenReference
from nemo_rpo.training.optimizer import build_optimizer
from nemo_rpo.training.step import StepResult, train_step

# The embedded task's warm-up: the tiny default model starts from random weights; 400 steps at 3e-3 make
# it a mediocre SFT policy (judge reward ~0.4 at temperature 1), with room for online RPO to improve it.
EMBEDDED_SFT_WARMUP = 800  # steps
EMBEDDED_SFT_PROMPTS = 512
# The embedded warm-up imitates a careless demonstrator, as real SFT data mix quality (the testbed's
# design, docs/learning.md): online RPO with the judge then has a flaw to learn away.
EMBEDDED_DEMOS = {"correct": 0.35, "chatty": 0.5, "truncated": 0.15}
EMBEDDED_SFT_WARMUP_LR = 3e-3


def train_online(cfg: RPOConfig) -> RunSummary:
    """Alg. 2 (and Alg. 4 when ``schedule.iterations > 1``)."""
    return train(cfg, Online(cfg))


class Online(PolicyAlgorithm):
    """Online RPO's part of the trainer's loop: each step's batch is sampled from the policy and scored,
    and the reference is a frozen copy of the policy taken at each iteration's first step."""

    def build(self, info: ParallelInfo) -> None:
        cfg = self.cfg
        self.info, self.tokenizer = info, build_tokenizer(cfg.data.tokenizer)
        tokenizer = self.tokenizer
        self.prompts = _load_prompts(cfg, tokenizer, info)
        self.sampler = GlobalBatchSampler(len(self.prompts), cfg.trainer.global_batch_size, info.dp_rank,
                                          info.dp_size, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle,
                                          source=_prompts_source(cfg), micro_batch_size=cfg.trainer.micro_batch_size)  # fmt: skip
        # before the warm-up: a bad reward config fails at once
        self.reward_model = build_reward_model(cfg.reward)
        self.model = build_policy_model(cfg, tokenizer.vocab_size)
        base = init_weights_from(cfg, self.model, info)  # the SFT policy
        self.sft_data = _sft_warmup(cfg, self.model, tokenizer, info)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim, cfg.parallel, cfg.trainer.max_steps,
                                                         keep_checkpoint_schedule=cfg.checkpoint.resume_schedule == "checkpoint")  # fmt: skip
        if base is not None:  # LoRA: the reference is the policy with its adapters off, no second model
            self.reference = self.adapter_ref = AdapterReference(self.model, self.optimizer, base,
                                                                 exp_dir=cfg.exp_dir, seed=cfg.trainer.seed)  # fmt: skip
        else:
            self.reference = FrozenReference(cfg.model, cfg.parallel, cfg.model.vocab_size or tokenizer.vocab_size,
                                             device=info.device, on_cpu=cfg.online.reference_on_cpu)  # fmt: skip
        self.generator = MegatronGenerator(self.model, cfg.generation, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                           vocab_size=tokenizer.vocab_size)  # fmt: skip
        self.width = round_up(max(len(p.ids) for p in self.prompts) + cfg.generation.max_new_tokens)
        self.share_prompt = shares_prompt(cfg.model)
        self.ref_root = Path(cfg.exp_dir) / "reference"

    def start(self, step: int) -> None:
        cfg = self.cfg
        if step > iteration_at(self.plan, min(step, cfg.trainer.max_steps - 1)).start:
            self.reference.load(self.ref_root)  # resumed mid-iteration: that iteration's reference
        save_resolved_config(cfg, self.info)  # every check has passed: a failed run leaves exp_dir as it was
        if self.sft_data is not None and self.info.rank == 0:
            write_jsonl(_sft_records(), self.sft_data)
        self.judge_before(step)

    def step(self, step: int) -> tuple[StepResult, dict]:
        cfg, info, it = self.cfg, self.info, iteration_at(self.plan, step)
        if step == it.start:  # Alg. 4, line 2: pi_ref := pi (for iteration 0: the initial policy)
            self.reference.update(self.model, step, self.ref_root)
        local = [self.prompts[i] for i in self.sampler.indices_for_step(step)]
        draws = sampling_generator(cfg.trainer.seed + 7919 * info.dp_rank, step)
        first_row = info.dp_rank * len(local)
        batch, gen_s, score_s = rollout(self.generator, self.reward_model, self.tokenizer, local, cfg.k, draws,
                                        first_row)  # fmt: skip
        micro = microbatches(batch.examples, cfg.trainer.micro_batch_size, self.tokenizer.pad_id, info.device,
                             width=self.width, share_prompt=self.share_prompt)  # fmt: skip
        ref_tick = time.perf_counter()
        ref_logps = (
            self.reference.sequence_logps(micro, cfg.trainer.global_batch_size) if _uses_ref(cfg) else None
        )
        train_tick = time.perf_counter()
        result = train_step(
            self.model, self.optimizer, self.scheduler, micro, table_lookup(ref_logps), it.loss
        )
        extra = _online_metrics(batch, ref_logps, first_row, info)
        extra.update(iteration=it.index, time_generate_s=gen_s, time_score_s=score_s,
                     time_reference_s=train_tick - ref_tick, time_train_s=time.perf_counter() - train_tick)  # fmt: skip
        return result, extra

    def console_line(self, metrics: dict) -> str:
        return super().console_line(metrics) + f" reward {metrics['reward']:.3f}"

    def save_now(self, step: int) -> bool:
        return self.ends_iteration(step)


def _uses_ref(cfg: RPOConfig) -> bool:
    return LOSSES[cfg.loss.name].uses_reference


def _prompts_source(cfg: RPOConfig) -> str:
    """The prompt set's file, named in errors (``<embedded synthetic task>`` for the default)."""
    return cfg.data.prompts_path or cfg.data.train_path or "<embedded synthetic task>"


def _load_prompts(cfg: RPOConfig, tokenizer, info: ParallelInfo) -> list[Prompt]:
    if cfg.data.prompts_path is not None or cfg.data.train_path is not None:
        prompts = load_prompts(cfg.data.prompts_path or cfg.data.train_path, tokenizer,
                               max_prompt_len=cfg.data.max_prompt_len, split=cfg.data.split,
                               renames=cfg.data.columns.renames())  # fmt: skip
    else:  # the embedded default: the synthetic task's prompts
        texts = [r["prompt"] for r in make_synthetic_preferences(512, 2, seed=0)]
        prompts = prompts_from_texts(texts, tokenizer, max_prompt_len=cfg.data.max_prompt_len)
    longest = max(len(p.ids) for p in prompts) + cfg.generation.max_new_tokens
    if longest > cfg.model.max_seq_len:
        from nemo_rpo.config.schema import ConfigError

        raise ConfigError(f"generation.max_new_tokens: the longest prompt ({longest - cfg.generation.max_new_tokens} "
                          f"tokens) plus {cfg.generation.max_new_tokens} new tokens exceeds model.max_seq_len "
                          f"({cfg.model.max_seq_len})")  # fmt: skip
    if info.rank == 0:
        print(
            f"prompts: {len(prompts)} (longest {longest - cfg.generation.max_new_tokens} tokens)", flush=True
        )
    return prompts


def _sft_records() -> list[dict]:
    return demonstrations(make_synthetic_preferences(EMBEDDED_SFT_PROMPTS, 2, seed=1), EMBEDDED_DEMOS, seed=1)


def _sft_warmup(cfg: RPOConfig, model, tokenizer, info: ParallelInfo) -> Path | None:
    """SFT on the embedded task's correct answers, so online RPO starts from an SFT policy as in §4.

    Returns:
        Where the embedded SFT data it trained on belongs (the caller writes it with the config), or None.
    """
    embedded = (
        cfg.data.prompts_path is None and cfg.data.train_path is None and cfg.checkpoint.init_from is None
    )
    steps = cfg.online.sft_warmup_steps
    steps = (EMBEDDED_SFT_WARMUP if embedded else 0) if steps is None else steps
    if steps == 0 or (cfg.checkpoint.resume and find_latest_checkpoint(cfg.exp_dir) is not None):
        return None  # nothing to do, or the warm-up is already in the checkpoint we resume from
    stack, embedded_path = contextlib.ExitStack(), None
    path = source = cfg.data.train_path
    if path is None:  # read from a staged copy; written to exp_dir with the config
        path = embedded_path = Path(cfg.exp_dir) / "data" / "synthetic_sft.jsonl"
        source = stack.enter_context(staged_jsonl(_sft_records(), path))
    k = 1 if cfg.data.train_path is None else cfg.k
    with stack:
        data = load_preference_dataset(source, cfg.data, tokenizer, k=k, max_seq_len=cfg.model.max_seq_len,
                                       require_rewards=LOSSES["sft"].needs_rewards)  # fmt: skip
    lr = cfg.online.sft_warmup_lr or (EMBEDDED_SFT_WARMUP_LR if embedded else cfg.optim.lr)
    optim = dataclasses.replace(cfg.optim, lr=lr, warmup_steps=0, decay_style="constant", min_lr=lr)
    optimizer, scheduler = build_optimizer(model, optim, cfg.parallel, steps)
    sampler = GlobalBatchSampler(len(data), cfg.trainer.global_batch_size, info.dp_rank, info.dp_size,
                                 seed=cfg.trainer.seed + 1, shuffle=True, source=str(path),
                                 micro_batch_size=cfg.trainer.micro_batch_size)  # fmt: skip
    sft = dataclasses.replace(cfg.loss, name="sft", sft_loss_weight=0.0)
    losses = []
    for step in range(steps):
        examples = [data[i] for i in sampler.indices_for_step(step)]
        micro = microbatches(examples, cfg.trainer.micro_batch_size, tokenizer.pad_id, info.device)
        result = train_step(model, optimizer, scheduler, micro, table_lookup(None), sft)
        losses.append(result.report["loss_sum"] / max(result.report["num_prompts"], 1.0))
    if info.rank == info.world_size - 1:
        print(f"sft warm-up: {steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    return embedded_path


def _online_metrics(batch, ref_logps, first_row: int, info: ParallelInfo) -> dict:
    """Reward mean/std, KL(pi || pi_ref) estimate and response length over the global batch."""
    rewards = batch.rewards.double()
    b, k = rewards.shape
    kl = torch.zeros(b, k, dtype=torch.float64)
    if ref_logps is not None:
        kl = batch.policy_logps.double() - ref_logps[first_row : first_row + b].double()
    sums = torch.tensor([rewards.sum(), (rewards**2).sum(), float(rewards.numel()), kl.sum(),
                         batch.lengths.double().sum()], dtype=torch.float64)  # fmt: skip
    if torch.distributed.is_initialized():
        sums = sums.to(info.device)
        torch.distributed.all_reduce(sums, group=parallel_state.get_data_parallel_group())
        sums = sums.cpu()
    total, squares, n, kl_sum, length = sums.tolist()
    mean = total / n
    return {
        "reward": mean,
        "reward_std": max(squares / n - mean * mean, 0.0) ** 0.5,
        "kl": kl_sum / n,
        "response_length": length / n,
    }
