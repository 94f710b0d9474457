"""Score a checkpoint the way §4.1 does: generate for each prompt set, ask the ground-truth judge.

Evaluation decodes greedily by default (``eval_temperature=0``; the paper does not say how it decodes),
which makes a checkpoint's score deterministic, so the within-run interval is over prompts only. The KL
to the SFT policy is the Monte-Carlo estimate ``E_{y ~ pi}[log pi(y|x) - log pi_sft(y|x)]`` from one
temperature-1 sample per valid prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nemo_rpo.algorithms.common import microbatches
from nemo_rpo.config.schema import GenerationConfig, ModelConfig, ParallelConfig
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.data.prompts import Prompt
from nemo_rpo.generation import MegatronGenerator, sampling_generator
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.training.checkpoint import load_checkpoint
from nemo_rpo.training.step import sequence_logps

__all__ = ["PolicyEvaluator"]


class PolicyEvaluator:
    """Loads checkpoints into one evaluation model and scores its generations.

    Args:
        model_cfg: the policy's shape.
        vocab_size: the tokenizer's vocabulary.
        tokenizer: decodes generations for the judge.
        sft_checkpoint: the SFT policy (the KL reference), loaded into a second model.
        max_new_tokens: generation budget.
        eval_temperature: 0 = greedy.
        micro_batch_size: rows per forward pass of the KL reference.
    """

    def __init__(self, model_cfg: ModelConfig, vocab_size: int, tokenizer, sft_checkpoint: str | Path, *,
                 max_new_tokens: int, eval_temperature: float, micro_batch_size: int) -> None:  # fmt: skip
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size
        self.model = build_gpt_model(model_cfg, ParallelConfig(), vocab_size)
        self.sft = build_gpt_model(model_cfg, ParallelConfig(), vocab_size)
        load_checkpoint(sft_checkpoint, self.sft, None, None, restore_rng=False)
        self.sft.requires_grad_(False)
        gen = dict(eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, vocab_size=tokenizer.vocab_size)
        self.greedy = MegatronGenerator(self.model, GenerationConfig(temperature=eval_temperature,
                                        max_new_tokens=max_new_tokens), **gen)  # fmt: skip
        self.sampler = MegatronGenerator(self.model, GenerationConfig(temperature=1.0,
                                         max_new_tokens=max_new_tokens), **gen)  # fmt: skip

    def load(self, checkpoint: str | Path) -> None:
        load_checkpoint(checkpoint, self.model, None, None, restore_rng=False)

    def responses(self, prompts: Sequence[Prompt], seed: int = 0) -> list[str]:
        """One response per prompt from the loaded weights (greedy unless ``eval_temperature > 0``)."""
        out = self.greedy.generate([p.ids for p in prompts], 1, sampling_generator(seed, 0))
        return [self.tokenizer.decode(ids) for ids in out.response_ids()]

    def kl_to_sft(self, prompts: Sequence[Prompt], seed: int = 0) -> float:
        """Mean over prompts of ``log pi(y|x) - log pi_sft(y|x)`` for one sample ``y ~ pi(.|x)``."""
        out = self.sampler.generate([p.ids for p in prompts], 1, sampling_generator(seed, 1))
        examples = [
            PreferenceExample(index=i, prompt_ids=list(p.ids), response_ids=[ids], rewards=None)
            for i, (p, ids) in enumerate(zip(prompts, out.response_ids()))
        ]
        micro = microbatches(
            examples, self.micro_batch_size, self.tokenizer.pad_id, torch.device("cpu"), fill=True
        )
        sft_logps = sequence_logps([self.sft], micro, len(examples))[:, 0]
        return float((out.seq_logps().double() - sft_logps).mean())
