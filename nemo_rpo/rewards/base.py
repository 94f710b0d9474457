"""The ``RewardModel`` protocol and the checks every implementation applies to its scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["RewardError", "RewardModel", "check_rewards", "rewards_tensor"]


class RewardError(RuntimeError):
    """Scoring failed: a judge returned bad values, or the reward service is unreachable or erred."""


@runtime_checkable
class RewardModel(Protocol):
    """Scores responses to prompts with one scalar each; holds no training state.

    Implementations: programmatic judges (:class:`~nemo_rpo.rewards.judges.JudgeRewardModel`), a
    remote service (:class:`~nemo_rpo.rewards.http.HTTPRewardModel`), and a learnt Megatron reward
    model. One that runs a model-parallel network is collective: every rank of its model-parallel
    group calls ``score`` with the same arguments and gets the same tensor.
    """

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``[N]`` float32 rewards for ``N`` (prompt, response) pairs, ``prompts[i]`` with ``responses[i]``."""
        ...


def check_rewards(values: Any, num: int, source: str) -> list[float]:
    """``values`` as a list of ``num`` finite floats, or :class:`RewardError` naming ``source``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise RewardError(f"{source}: expected a list of {num} floats, got {type(values).__name__}")
    if len(values) != num:
        raise RewardError(f"{source}: returned {len(values)} rewards for {num} responses")
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RewardError(f"{source}: reward {i} is {value!r}, not a finite number")
        out.append(float(value))
    return out


def rewards_tensor(values: list[float]) -> torch.Tensor:
    """``[N]`` float32 on the CPU."""
    return torch.tensor(values, dtype=torch.float32).reshape(len(values))
