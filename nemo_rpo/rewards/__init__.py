"""Reward scoring behind the :class:`RewardModel` protocol: judges, a reward service, learnt RMs.

:func:`build_reward_model` turns a :class:`~nemo_rpo.config.schema.RewardConfig` into one.
"""

from __future__ import annotations

from nemo_rpo.config.schema import ConfigError, RewardConfig
from nemo_rpo.rewards.base import RewardError, RewardModel, check_rewards
from nemo_rpo.rewards.http import HTTPRewardModel
from nemo_rpo.rewards.judges import JudgeRewardModel, load_judge, synthetic_task_reward

__all__ = [
    "HTTPRewardModel",
    "JudgeRewardModel",
    "RewardError",
    "RewardModel",
    "build_reward_model",
    "check_rewards",
    "load_judge",
    "synthetic_task_reward",
]


def build_reward_model(cfg: RewardConfig) -> RewardModel:
    """The reward model ``cfg.kind`` selects.

    ``kind=megatron`` loads the learnt reward model of a ``nemo-rpo-train-rm`` run (``cfg.path``) into
    the current megatron layout; that one is collective (every rank builds it and calls ``score``).

    Raises:
        ConfigError: the judge cannot be loaded.
    """
    if cfg.kind == "judge":
        return JudgeRewardModel(cfg.judge)
    if cfg.kind == "http":
        assert cfg.url is not None  # RewardConfig.__post_init__ requires it for kind=http
        return HTTPRewardModel(cfg.url, timeout=cfg.timeout, retries=cfg.retries)
    if cfg.kind == "megatron":
        from nemo_rpo.rewards.megatron_rm import MegatronRewardModel  # imports megatron: only when asked

        assert cfg.path is not None  # RewardConfig.__post_init__ requires it for kind=megatron
        return MegatronRewardModel(cfg.path)
    raise ConfigError(f"reward.kind: unknown kind {cfg.kind!r}")
