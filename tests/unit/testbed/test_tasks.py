"""The testbed's SFT demonstrations: shares, the flaws' texts, disjoint splits, config checks."""

from __future__ import annotations

import pytest

from nemo_rpo.config import testbed_schema
from nemo_rpo.config.schema import ConfigError
from nemo_rpo.rewards.judges import synthetic_task_reward
from nemo_rpo.testbed.tasks import SIGN_OFF, demonstrations, make_splits


def test_demonstrations_follow_the_mix_and_each_flaw_costs_reward():
    splits = make_splits(num_sft=2000, num_pref=10, num_valid=10, num_test=10, num_ood=10, seed=0)
    demos = demonstrations(splits.sft, {"correct": 0.35, "chatty": 0.5, "truncated": 0.15}, seed=0)
    assert [d["prompt"] for d in demos] == [r["prompt"] for r in splits.sft]
    shares = {
        kind: sum(d["kind"] == kind for d in demos) / len(demos)
        for kind in ("correct", "chatty", "truncated")
    }
    for kind, want in {"correct": 0.35, "chatty": 0.5, "truncated": 0.15}.items():
        assert abs(shares[kind] - want) < 0.04, shares  # binomial sd at n=2000 is <= 0.012
    rewards = synthetic_task_reward([d["prompt"] for d in demos], [d["responses"][0] for d in demos])
    for record, d, r in zip(splits.sft, demos, rewards):
        text, answer = d["responses"][0], record["responses"][record["rewards"].index(1.0)]
        if d["kind"] == "correct":
            assert text == answer and r == 1.0
        elif d["kind"] == "chatty":
            assert text == answer + SIGN_OFF and r < 1.0
        else:
            assert answer.startswith(text) and len(text) < len(answer) and r < 1.0
    again = demonstrations(splits.sft, {"correct": 0.35, "chatty": 0.5, "truncated": 0.15}, seed=0)
    assert again == demos  # a deterministic function of its arguments


def test_correct_only_reproduces_the_answers():
    splits = make_splits(num_sft=50, num_pref=5, num_valid=5, num_test=5, num_ood=5, seed=3)
    demos = demonstrations(splits.sft, {"correct": 1.0}, seed=3)
    assert (
        synthetic_task_reward([d["prompt"] for d in demos], [d["responses"][0] for d in demos]) == [1.0] * 50
    )


@pytest.mark.parametrize(
    "mix, message",
    [({"correct": 0.5, "rude": 0.5}, "unknown behaviours ['rude']"), ({"correct": 0.5}, "sum to 1")],
)
def test_bad_mix_is_a_config_error(mix, message):
    with pytest.raises(ConfigError, match="sft_demos") as err:
        testbed_schema.TestbedConfig(sft_demos=mix)
    assert message in str(err.value)
