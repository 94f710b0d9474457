"""Megatron's inference controller builds its sampling generator on the CPU (cpu_support item 4)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU layer is inactive on GPU machines")
def test_text_generation_controller_generator_is_on_cpu(
    world1: ParallelInfo, tiny_config: Callable[..., ModelConfig]
) -> None:
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
    from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import (
        InferenceWrapperConfig,
    )
    from megatron.core.inference.text_generation_controllers.text_generation_controller import (
        TextGenerationController,
    )

    model = build_gpt_model(tiny_config(num_layers=1), ParallelConfig(), vocab_size=100)
    wrapper_cfg = InferenceWrapperConfig(hidden_size=32, params_dtype=torch.float32,
                                         inference_batch_times_seqlen_threshold=1000, padded_vocab_size=128)  # fmt: skip
    wrapped = GPTInferenceWrapper(model, wrapper_cfg, StaticInferenceContext.from_config(wrapper_cfg))
    controller = TextGenerationController(inference_wrapped_model=wrapped, tokenizer=None)
    assert controller.sampling_rng.device.type == "cpu"
    assert torch.cuda.current_device() == 0  # the override is scoped to the constructor
