"""Sample K responses per prompt from the policy and score them: the data of online RPO (Alg. 2, lines
3-4) and of each regenerated offline iteration (Alg. 3)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.data.prompts import Prompt
from nemo_rpo.generation import ResponseGenerator


@dataclass
class Rollout:
    """B prompts x K scored samples of this rank.

    Attributes:
        examples: one PreferenceExample per prompt (K responses, their rewards, ``index`` = global row).
        rewards: ``[B, K]`` float32.
        policy_logps: ``[B, K]`` sequence log-probs of the samples under the policy that drew them.
        texts: ``B*K`` decoded responses, prompt-major.
        lengths: ``[B*K]`` generated tokens per response (eos included).
    """

    examples: list[PreferenceExample]
    rewards: torch.Tensor
    policy_logps: torch.Tensor
    texts: list[str]
    lengths: torch.Tensor


def rollout(
    generator: ResponseGenerator,
    reward_model,
    tokenizer,
    prompts: Sequence[Prompt],
    k: int,
    sampler: torch.Generator,
    first_index: int,
) -> tuple[Rollout, float, float]:
    """Generate K samples per prompt, decode and score them; returns ``(rollout, gen_s, score_s)``."""
    tick = time.perf_counter()
    out = generator.generate([p.ids for p in prompts], k, sampler)
    generated = time.perf_counter()
    response_ids = out.response_ids()
    texts = [tokenizer.decode(ids) for ids in response_ids]
    rewards = reward_model.score([p.text for p in prompts for _ in range(k)], texts)
    rewards = torch.as_tensor(rewards, dtype=torch.float32).reshape(len(prompts), k)
    if not torch.isfinite(rewards).all():
        raise ValueError("reward model returned a non-finite reward")
    scored = time.perf_counter()
    examples = [
        PreferenceExample(
            index=first_index + b,
            prompt_ids=list(p.ids),
            response_ids=response_ids[b * k : (b + 1) * k],
            rewards=rewards[b].tolist(),
        )
        for b, p in enumerate(prompts)
    ]
    logps = out.seq_logps().reshape(len(prompts), k)
    result = Rollout(examples, rewards, logps, texts, out.response_lengths.clone())
    return result, generated - tick, scored - generated
