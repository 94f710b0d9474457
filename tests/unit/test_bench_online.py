"""The online-step benchmark's pure parts (issue 20, item 4): the shared workload, the tokenizer both sides
load, the reward as nemo-rpo's ``RewardModel`` and the ratio bookkeeping. No timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_online  # noqa: E402
import online_workload as w  # noqa: E402


def test_prompts_are_deterministic_and_avoid_pad_and_eos() -> None:
    a = w.prompt_ids(8, 64, 50, seed=3)
    assert a == w.prompt_ids(8, 64, 50, seed=3)
    assert a != w.prompt_ids(8, 64, 50, seed=4)
    assert [len(p) for p in a] == [64] * 8
    flat = [i for p in a for i in p]
    assert min(flat) >= 1 and max(flat) <= 48  # 0 is pad, 49 is EOS
    assert len(set(flat)) > 40  # the whole range is used
    with pytest.raises(ValueError, match="vocab_size >= 3"):
        w.prompt_ids(1, 4, 2, seed=0)


def test_text_round_trip_and_bad_words() -> None:
    ids = [17, 4031, 0, 49150]
    assert w.ids_to_text(ids) == "t17 t4031 t0 t49150"
    assert w.text_to_ids(w.ids_to_text(ids)) == ids
    assert w.text_to_ids("  ") == []
    with pytest.raises(ValueError, match=r"word 1 \('x12'\)"):
        w.text_to_ids("t1 x12")
    with pytest.raises(ValueError, match=r"word 0 \('t'\)"):
        w.text_to_ids("t")


def test_reward_is_the_mean_last_digit() -> None:
    assert w.reward_of_ids(list(range(10))) == pytest.approx(0.5)
    assert w.reward_of_ids([9, 19, 49139]) == 1.0
    assert w.reward_of_ids([10, 20]) == 0.0
    assert w.reward_of_ids([]) == 0.0
    assert w.reward_of_text("t3 t13") == pytest.approx(3 / 9)


def test_tokens_per_step() -> None:
    assert w.tokens_per_step(8, 4, 64, 32) == {"generated": 1024, "trained": 3072, "total": 4096}


def test_word_tokenizer_decodes_to_the_ids_both_rewards_read() -> None:
    """Both sides decode with special tokens skipped: pad (t0) and EOS drop out of the text alike."""
    tok = bench_online.word_tokenizer(64)
    assert tok.eos_token_id == 63 and tok.pad_token_id == 0 and len(tok) == 64
    assert tok(text="t5 t7 t62")["input_ids"] == [5, 7, 62]
    text = tok.decode([5, 0, 62, 63, 11], skip_special_tokens=True)
    assert w.text_to_ids(text) == [5, 62, 11]
    reward = bench_online.TokenReward().score(["t1", "t1"], [text, ""])
    assert reward.dtype == torch.float32
    assert reward.tolist() == pytest.approx([w.reward_of_ids([5, 62, 11]), 0.0])


def test_summarize_ratios_per_round_and_of_medians() -> None:
    def row(wall: float, cpu: float, rss: float) -> dict:
        return {"s_per_step": wall, "cpu_s_per_step": cpu, "peak_rss_mb": rss}

    rounds = [
        {"rpo": row(10.0, 18.0, 4000.0), "trl": row(20.0, 30.0, 5000.0)},
        {"rpo": row(12.0, 20.0, 4100.0), "trl": row(18.0, 36.0, 5000.0)},
        {"rpo": row(11.0, 22.0, 4200.0), "trl": row(33.0, 33.0, 6000.0)},
    ]
    out = bench_online.summarize(rounds, ["rpo", "trl"], tokens=4400)
    assert out["rows"]["rpo"]["s_per_step"] == 11.0
    assert out["rows"]["rpo"]["tokens_per_s"] == pytest.approx(400.0)
    r = out["ratios"]["rpo_vs_trl"]
    assert r["speed_per_round"] == pytest.approx([2.0, 1.5, 3.0])
    assert r["cpu_per_round"] == pytest.approx([30 / 18, 36 / 20, 33 / 22])
    assert r["speed_ratio_of_medians"] == pytest.approx(20.0 / 11.0)
    assert r["cpu_ratio_of_medians"] == pytest.approx(33.0 / 20.0)
    assert r["memory_ratio_of_medians"] == pytest.approx(4100.0 / 5000.0)
    assert bench_online.summarize(rounds, ["rpo"], tokens=1)["ratios"] == {}
