"""Programmatic judges: a Python function ``(prompts, responses) -> list[float]`` named by dotted path.

``reward.judge: "pkg.module:function"`` is imported once; :class:`JudgeRewardModel` checks what it
returns. :func:`synthetic_task_reward` is the judge of the bundled synthetic task
(:mod:`nemo_rpo.data.synthetic`): the same continuous reward its preference data was labelled with.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable

import torch

from nemo_rpo.config.schema import ConfigError
from nemo_rpo.rewards.base import check_rewards, rewards_tensor

__all__ = ["Judge", "JudgeRewardModel", "load_judge", "synthetic_task_reward"]

Judge = Callable[[list[str], list[str]], list[float]]


def load_judge(path: str, field_name: str = "reward.judge") -> Judge:
    """Import the callable named ``"pkg.module:function"`` (``function`` may be ``Class.method``).

    Raises:
        ConfigError: a malformed path, a module that does not import, a missing or non-callable name;
            one line, naming ``field_name``.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{field_name}: expected 'pkg.module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{field_name}: cannot import module {module_name!r} ({err})") from err
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field_name}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{field_name}: {path!r} is a {type(target).__name__}, not a function")
    return target


class JudgeRewardModel:
    """A :class:`~nemo_rpo.rewards.base.RewardModel` that calls a judge function in-process."""

    def __init__(self, judge: Judge | str) -> None:
        """Args: judge: the function, or its ``"pkg.module:function"`` path (see :func:`load_judge`)."""
        self.name = judge if isinstance(judge, str) else getattr(judge, "__qualname__", repr(judge))
        self.judge = load_judge(judge) if isinstance(judge, str) else judge

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``[N]`` float32 rewards; :class:`~nemo_rpo.rewards.base.RewardError` on a bad judge result."""
        return rewards_tensor(score_with_judge(self.judge, prompts, responses, self.name))


def score_with_judge(judge: Judge, prompts: list[str], responses: list[str], name: str) -> list[float]:
    """Call ``judge`` and check its result (shared by the in-process model and the HTTP service)."""
    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    return check_rewards(judge(list(prompts), list(responses)), len(responses), f"judge {name}")


# The synthetic task's prompt: "<task>: <argument>\n" (possibly inside a chat rendering).
_TASK = re.compile(r"(reverse|sort|upper): ([^\n]*)")


def _synthetic_answer(prompt: str) -> str:
    matches = _TASK.findall(prompt)
    if not matches:
        raise ValueError(f"synthetic_task_reward: {prompt!r} is not a 'reverse:', 'sort:' or 'upper:' prompt")
    task, arg = matches[-1]
    if task == "reverse":
        return arg[::-1]
    if task == "sort":
        return " ".join(sorted(arg.split()))
    return arg.upper()


def synthetic_task_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Character-level similarity of each response to the task's correct answer, in [0, 1].

    The bundled dataset's reward (``difflib.SequenceMatcher`` ratio, 4 decimals): 1.0 for the correct
    answer, partial credit for near misses, so a policy trained online on the default task can raise it.
    """
    return [round(difflib.SequenceMatcher(None, response, _synthetic_answer(prompt)).ratio(), 4)
            for prompt, response in zip(prompts, responses, strict=True)]  # fmt: skip
