"""A one-process megatron world and a tiny, layout-invariantly initialised GPT for generation tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.data.tokenizer import ByteTokenizer
from nemo_rpo.distributed.launch import ParallelInfo, init_distributed, teardown_distributed


def tiny_model_config() -> ModelConfig:
    # A larger init std than 0.02 makes next-token distributions peaked (no near-ties for greedy decoding)
    # while keeping float32 rounding of the log-probs near 1e-6.
    return ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_seq_len=32, normalization="RMSNorm",
                       activation="swiglu", position_embedding_type="rope", untie_embeddings_and_output_weights=False,
                       precision="fp32", transformer_impl="local", init_method_std=0.2)  # fmt: skip


@pytest.fixture(scope="module")
def world1() -> Iterator[ParallelInfo]:
    with pytest.MonkeyPatch.context() as mp:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
            mp.delenv(key, raising=False)
        info = init_distributed(ParallelConfig(), seed=0)
        yield info
        teardown_distributed()


@pytest.fixture(scope="module")
def policy(world1: ParallelInfo):  # noqa: ANN201 - a megatron GPTModel
    from nemo_rpo.models.gpt import build_gpt_model

    return build_gpt_model(tiny_model_config(), ParallelConfig(), ByteTokenizer.vocab_size, init_seed=11)
