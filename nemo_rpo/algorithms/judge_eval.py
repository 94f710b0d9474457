"""The embedded default's held-out check: does training make the policy better under its known judge?

The embedded synthetic task has a deterministic judge (:func:`nemo_rpo.rewards.judges.synthetic_task_reward`),
so a run on it can score its own policy before and after training: greedy responses to held-out prompts
(a seed no training data or online prompt uses), scored by the judge. A run prints both numbers; they
are the learning signal a user can check without the testbed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from nemo_rpo.config.schema import RPOConfig
from nemo_rpo.data.prompts import Prompt, prompts_from_texts
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.generation import MegatronGenerator, sampling_generator
from nemo_rpo.rewards.judges import synthetic_task_reward

__all__ = ["HELD_OUT_PROMPTS", "embedded_task", "held_out_prompts", "judge_reward", "report_judge"]

HELD_OUT_PROMPTS = 128
_HELD_OUT_SEED = 2  # seed 0 makes the training data and online prompts, seed 1 the online SFT warm-up data


def embedded_task(cfg: RPOConfig) -> bool:
    """Whether the run trains on the embedded synthetic task (no data or prompt file of the user's)."""
    return cfg.data.train_path is None and cfg.data.prompts_path is None


def held_out_prompts(cfg: RPOConfig, tokenizer) -> list[Prompt]:
    texts = [r["prompt"] for r in make_synthetic_preferences(HELD_OUT_PROMPTS, 2, seed=_HELD_OUT_SEED)]
    return prompts_from_texts(texts, tokenizer, max_prompt_len=cfg.data.max_prompt_len)


@torch.no_grad()
def judge_reward(cfg: RPOConfig, model, tokenizer, prompts: list[Prompt]) -> float:
    """Mean judge reward of the policy's greedy responses to ``prompts`` (collective: every rank calls it)."""
    greedy = dataclasses.replace(cfg.generation, temperature=0.0)
    generator = MegatronGenerator(model, greedy, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                  vocab_size=tokenizer.vocab_size)  # fmt: skip
    out = generator.generate([p.ids for p in prompts], 1, sampling_generator(0, 0))
    texts = [tokenizer.decode(ids) for ids in out.response_ids()]
    rewards = synthetic_task_reward([p.text for p in prompts], texts)
    return sum(rewards) / len(rewards)


def report_judge(judged: dict[int, float], info, exp_dir: str) -> None:
    """Print the held-out judge reward at each step it was measured; rank 0 writes ``judge_eval.json``."""
    if info.rank != 0:
        return
    steps = sorted(judged)
    line = " -> ".join(f"step {s} {judged[s]:.3f}" for s in steps)
    print(f"held-out judge reward (greedy, {HELD_OUT_PROMPTS} prompts): {line}", flush=True)
    path = Path(exp_dir) / "judge_eval.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"prompts": HELD_OUT_PROMPTS, "decoding": "greedy",
                               "reward_by_step": {str(s): judged[s] for s in steps}}, indent=2) + "\n")  # fmt: skip
    tmp.replace(path)
