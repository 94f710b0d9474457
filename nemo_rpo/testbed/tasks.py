"""The testbed's task family: prompt splits and the deterministic ground-truth judge.

In distribution are the bundled synthetic string tasks (:mod:`nemo_rpo.data.synthetic`: ``reverse``,
``sort``, ``upper`` on 3-8 letters or 3-6 digits). Out of distribution are the same three tasks on
longer arguments (9-12 letters, 7-9 digits): the paper's alpacaeval stands to lmsys as these stand to
the training prompts, same judge, shifted inputs. The judge is
:func:`nemo_rpo.rewards.judges.synthetic_task_reward`: the character-level similarity to the correct
answer, a continuous reward in [0, 1] under which a briefly fine-tuned tiny policy scores anywhere
between 0.2 and 1 per prompt.

All splits come from one seeded pool, de-duplicated, so SFT, preference, valid and test prompts are
pairwise disjoint.

The SFT demonstrations are of mixed quality, as real SFT data are (:func:`demonstrations`): a share
of them is the bare correct answer, the rest shows two typical flaws of a careless demonstrator, a
chatty sign-off after the answer (``aqfk ok!``) and an answer stopped half-way. Which one a prompt
gets does not depend on the prompt, so the SFT policy learns the task *and* the flaws, greedy decoding
follows the most frequent behaviour, and its samples for one prompt differ in quality: the judge's
preferences carry a signal the demonstrations alone do not, which is what preference optimization is
for. (With correct demonstrations only, the policy's remaining errors are those of its capacity, which
sequence-level rewards on a few samples barely move: ``docs/learning.md``.)
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from nemo_rpo.data.synthetic import FLAWS, SIGN_OFF, demonstrations, make_synthetic_preferences

__all__ = ["FLAWS", "JUDGE", "SIGN_OFF", "Splits", "demonstrations", "make_splits"]

JUDGE = "nemo_rpo.rewards.judges:synthetic_task_reward"


@dataclass
class Splits:
    """Prompt texts per split; ``sft`` records also hold the correct answer and a wrong one."""

    sft: list[dict]
    pref: list[str]
    valid: list[str]
    test: list[str]
    ood: list[str]


def make_splits(
    *, num_sft: int, num_pref: int, num_valid: int, num_test: int, num_ood: int, seed: int
) -> Splits:
    """Disjoint in-distribution splits and an OOD set, a deterministic function of the arguments."""
    wanted = num_sft + num_pref + num_valid + num_test
    pool, seen, draw = [], set(), 0
    while len(pool) < wanted:  # the in-distribution space is finite: draw until enough distinct prompts
        for record in make_synthetic_preferences(wanted, 2, seed=seed * 1000 + draw):
            if record["prompt"] not in seen:
                seen.add(record["prompt"])
                pool.append(record)
        draw += 1
    pool = pool[:wanted]
    sft, rest = pool[:num_sft], [r["prompt"] for r in pool[num_sft:]]
    pref, valid, test = rest[:num_pref], rest[num_pref : num_pref + num_valid], rest[num_pref + num_valid :]
    return Splits(sft=sft, pref=pref, valid=valid, test=test, ood=_ood_prompts(num_ood, seed))


def _ood_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(f"ood-{seed}")
    prompts: list[str] = []
    while len(prompts) < n:
        task = rng.choice(("reverse", "sort", "upper"))
        if task == "sort":
            text = f"sort: {' '.join(rng.choice(string.digits) for _ in range(rng.randint(7, 9)))}\n"
        else:
            text = (
                f"{task}: {''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(9, 12)))}\n"
            )
        if text not in prompts:
            prompts.append(text)
    return prompts
