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

from nemo_rpo.algorithms.common import RunSummary, read_preferences, save_run_files
from nemo_rpo.algorithms.trainer import train
from nemo_rpo.config.rm_schema import RMTrainConfig
from nemo_rpo.data.batch import PreferenceBatch, collate, round_up
from nemo_rpo.data.errors import DataError
from nemo_rpo.data.preference import PreferenceDataset
from nemo_rpo.data.sampler import GlobalBatchSampler, split_micro_batches
from nemo_rpo.data.tokenizer import build_tokenizer
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.training.logger import console_line
from nemo_rpo.training.reward_model import RM_LINE, build_reward_trainer, rm_step_metrics, train_rm_step
from nemo_rpo.training.step import StepResult


def train_reward_model(cfg: RMTrainConfig) -> RunSummary:
    """For t = 1..T: take a batch of prompts with K scored responses, step the RM on its pair losses."""
    return train(cfg, RewardModelTraining(cfg))


class RewardModelTraining:
    """Reward-model training's part of the trainer's loop: a fixed dataset, no reference, the RM step."""

    def __init__(self, cfg: RMTrainConfig) -> None:
        self.cfg = cfg

    def build(self, info: ParallelInfo) -> None:
        cfg = self.cfg
        self.info, self.tokenizer = info, build_tokenizer(cfg.data.tokenizer)
        self.dataset = _load_dataset(cfg, self.tokenizer, info)
        self.model, self.optimizer, self.scheduler = build_reward_trainer(cfg, self.tokenizer.vocab_size)
        self.sampler = GlobalBatchSampler(len(self.dataset), cfg.trainer.global_batch_size, info.dp_rank,
                                          info.dp_size, seed=cfg.trainer.seed, shuffle=cfg.data.shuffle,
                                          source=self.dataset.path, micro_batch_size=cfg.trainer.micro_batch_size)  # fmt: skip

    def start(self, step: int) -> None:
        save_run_files(self.cfg, self.info)  # every check has passed: a failed run leaves exp_dir as it was

    def step(self, step: int) -> tuple[StepResult, dict]:
        micro = _microbatches(self.dataset, self.sampler.indices_for_step(step), self.cfg, self.tokenizer.pad_id,
                              self.info)  # fmt: skip
        return train_rm_step(self.model, self.optimizer, self.scheduler, micro, self.cfg.objective), {}

    def metrics(self, step: int, result: StepResult, seconds: float) -> dict:
        return rm_step_metrics(step, result.report, result.grad_norm, result.lr, seconds)

    def console_line(self, metrics: dict) -> str:
        return console_line(metrics, self.cfg.trainer.max_steps, RM_LINE)

    def save_now(self, step: int) -> bool:
        return False

    def checkpoint_extra(self, step: int) -> dict:
        return {}

    def finish(self) -> None:
        pass


def _load_dataset(cfg: RMTrainConfig, tokenizer, info: ParallelInfo) -> PreferenceDataset:
    dataset = read_preferences(cfg, tokenizer, cfg.data.train_path, k=cfg.k,
                               require_rewards=cfg.objective == "regression")  # fmt: skip
    if cfg.objective == "regression" and not dataset.has_rewards:
        raise DataError(dataset.path, None, "rewards", f"{dataset.format} data has no rewards; "
                        "objective=regression needs them (use bradley_terry, or the native/nemo_aligner format)")  # fmt: skip
    if info.rank == 0:
        print(f"data: {dataset.path} ({dataset.format}): {dataset.stats.summary()}")
    return dataset


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
