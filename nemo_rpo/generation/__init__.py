"""Sampling K responses per prompt from the policy, behind the :class:`ResponseGenerator` protocol.

``sampling`` is pure torch (temperature, top-k, top-p, greedy; seeded draws); ``megatron_generator``
runs the Megatron GPT stages with a KV cache under any TP x PP layout.
"""

from nemo_rpo.generation.base import GenerationOutput, ResponseGenerator
from nemo_rpo.generation.megatron_generator import MegatronGenerator, generate
from nemo_rpo.generation.sampling import filter_logits, sampling_generator, select_tokens

__all__ = [
    "GenerationOutput",
    "MegatronGenerator",
    "ResponseGenerator",
    "filter_logits",
    "generate",
    "sampling_generator",
    "select_tokens",
]
