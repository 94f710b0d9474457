"""A one-process megatron world (gloo, TP=PP=DP=1) for model unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo, init_distributed, teardown_distributed


def _tiny_config(**overrides: object) -> ModelConfig:
    """A 2-layer Llama-shaped model; every field the tests count on is explicit."""
    fields = dict(num_layers=2, hidden_size=32, num_attention_heads=4, max_seq_len=16, make_vocab_size_divisible_by=128,
                  normalization="RMSNorm", activation="swiglu", position_embedding_type="rope", add_bias_linear=False,
                  untie_embeddings_and_output_weights=False, precision="fp32", transformer_impl="auto")  # fmt: skip
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., ModelConfig]:
    """Factory: ``tiny_config(hidden_size=64, ...)`` -> ModelConfig."""
    return _tiny_config


@pytest.fixture(scope="module")
def world1(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[ParallelInfo]:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch_module.delenv(key, raising=False)
    info = init_distributed(ParallelConfig(), seed=0)
    yield info
    teardown_distributed()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp
