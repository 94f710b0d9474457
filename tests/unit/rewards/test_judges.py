"""Judges: the synthetic-task judge reproduces the dataset's rewards; loading and checking errors."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_rpo.config.schema import ConfigError, GenerationConfig, RewardConfig
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.rewards import (
    HTTPRewardModel,
    JudgeRewardModel,
    RewardError,
    RewardModel,
    build_reward_model,
    load_judge,
    synthetic_task_reward,
)


def test_synthetic_judge_reproduces_the_dataset_rewards() -> None:
    records = make_synthetic_preferences(num_prompts=150, k=7, seed=3)
    prompts = [r["prompt"] for r in records for _ in r["responses"]]
    responses = [resp for r in records for resp in r["responses"]]
    assert synthetic_task_reward(prompts, responses) == [x for r in records for x in r["rewards"]]


def test_synthetic_judge_by_hand() -> None:
    """'cbx' vs answer 'cba': 2 matching chars, ratio 2 * 2 / (3 + 3) = 0.6667; chat wrapping is fine."""
    prompts = ["reverse: abc\n", "<|user|>\nreverse: abc\n<|assistant|>\n", "sort: 3 1 2\n", "upper: ab\n"]
    assert synthetic_task_reward(prompts, ["cba", "cbx", "1 2 3", ""]) == [1.0, 0.6667, 1.0, 0.0]
    with pytest.raises(ValueError, match="not a 'reverse:'"):
        synthetic_task_reward(["translate: abc\n"], ["x"])


def test_judge_reward_model_returns_float32_and_checks_results() -> None:
    model = JudgeRewardModel("nemo_rpo.rewards.judges:synthetic_task_reward")
    assert isinstance(model, RewardModel)
    rewards = model.score(["upper: ab\n", "upper: ab\n"], ["AB", "Ab"])
    assert rewards.dtype == torch.float32 and rewards.tolist() == [1.0, 0.5]
    with pytest.raises(RewardError, match="returned 1 rewards for 2 responses"):
        JudgeRewardModel(lambda p, r: [0.0]).score(["a", "b"], ["a", "b"])
    with pytest.raises(RewardError, match="reward 1 is nan"):
        JudgeRewardModel(lambda p, r: [0.0, math.nan]).score(["a", "b"], ["a", "b"])
    with pytest.raises(RewardError, match="expected a list"):
        JudgeRewardModel(lambda p, r: "1.0").score(["a"], ["b"])


@pytest.mark.parametrize(
    "path, message",
    [
        ("nemo_rpo.rewards.judges.synthetic_task_reward", "expected 'pkg.module:function'"),
        ("nemo_rpo.no_such_module:fn", "cannot import module 'nemo_rpo.no_such_module'"),
        ("nemo_rpo.rewards.judges:no_such_fn", "has no attribute 'no_such_fn'"),
        ("nemo_rpo.rewards.judges:__all__", "is a list, not a function"),
    ],
)
def test_load_judge_errors_are_one_line(path: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_judge(path)
    assert str(err.value).startswith("reward.judge: ") and "\n" not in str(err.value)


def test_load_judge_resolves_nested_names() -> None:
    assert load_judge("nemo_rpo.rewards.judges:synthetic_task_reward") is synthetic_task_reward
    assert load_judge("nemo_rpo.rewards.judges:JudgeRewardModel.score") is JudgeRewardModel.score


def test_build_reward_model_and_config_checks() -> None:
    assert isinstance(build_reward_model(RewardConfig()), JudgeRewardModel)
    http = build_reward_model(RewardConfig(kind="http", url="http://127.0.0.1:9/", timeout=2.0, retries=0))
    assert isinstance(http, HTTPRewardModel) and http.url == "http://127.0.0.1:9" and http.timeout == 2.0
    for bad, field in ((dict(kind="llm"), "reward.kind"), (dict(kind="http"), "reward.url"),
                       (dict(judge="pkg.fn"), "reward.judge"), (dict(timeout=0.0), "reward.timeout"),
                       (dict(retries=-1), "reward.retries")):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            RewardConfig(**bad)


def test_generation_config_checks() -> None:
    assert GenerationConfig().use_kv_cache
    for bad, field in ((dict(temperature=-0.1), "temperature"), (dict(top_p=0.0), "top_p"),
                       (dict(top_k=-1), "top_k"), (dict(max_new_tokens=0), "max_new_tokens")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"generation.{field}"):
            GenerationConfig(**bad)
