"""Shared fixtures: a one-process world with a tiny model config."""

from __future__ import annotations

import pytest

from nemo_rpo.config.schema import ModelConfig, OptimConfig, RPOConfig, TrainerConfig
from nemo_rpo.distributed.launch import init_distributed, teardown_distributed


@pytest.fixture
def world1(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    cfg = RPOConfig(model=ModelConfig(hidden_size=32, max_seq_len=16), optim=OptimConfig(warmup_steps=0),
                    trainer=TrainerConfig(global_batch_size=2, micro_batch_size=2))  # fmt: skip
    info = init_distributed(cfg.parallel, seed=0)
    yield cfg, info
    teardown_distributed()
