"""The bundled default dataset: tiny string tasks with graded responses and continuous rewards.

Each prompt asks for one of three byte-level transformations, small enough for a 2-layer
byte-level GPT to pick up on CPU within a few dozen steps::

    reverse: kfqa\\n    -> aqfk
    sort: 3 7 2\\n      -> 2 3 7
    upper: mdew\\n      -> MDEW

Every record holds the correct answer and K - 1 distinct wrong ones (a character substituted, two
substituted, neighbours swapped, the tail dropped, the input echoed, a random string), in random
order. A response's reward is its character-level similarity to the correct answer
(``difflib.SequenceMatcher`` ratio, 4 decimals): 1.0 for the answer, below 1.0 for every other.
Prompts are at most 18 characters and responses at most 11, so a sequence (with ``bos`` and ``eos``)
is at most 31 byte tokens.

Regenerate the shipped files with ``python -m nemo_rpo.data.synthetic --k 4`` (and ``--k 2``).
"""

from __future__ import annotations

import argparse
import difflib
import random
import string
from importlib import resources
from pathlib import Path
from typing import Any

from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import write_jsonl

__all__ = [
    "BUNDLED_K",
    "FLAWS",
    "SIGN_OFF",
    "default_train_path",
    "demonstrations",
    "make_synthetic_preferences",
    "write_jsonl",
]

BUNDLED_K = (2, 4)  # K of the shipped nemo_rpo/assets/synthetic_prefs_k{K}.jsonl files
BUNDLED_NUM_PROMPTS = 512
BUNDLED_SEED = 0


def make_synthetic_preferences(num_prompts: int, k: int, seed: int) -> list[dict[str, Any]]:
    """Native-format records ``{"id", "prompt", "responses", "rewards"}`` for the synthetic tasks.

    Args:
        num_prompts: Records to make.
        k: Responses per record (2 to 7): the correct answer plus ``k - 1`` wrong ones.
        seed: Everything is a deterministic function of ``(num_prompts, k, seed)``.
    """
    if not 2 <= k <= 7:
        raise ValueError(f"k must be in [2, 7] (one correct answer + up to 6 kinds of mistake), got {k}")
    rng = random.Random(seed)
    records = []
    for i in range(num_prompts):
        task = rng.choice(("reverse", "sort", "upper"))
        prompt, arg, answer, alphabet = _make_task(task, rng)
        responses = [answer, *_wrong_answers(arg, answer, alphabet, k - 1, rng)]
        rng.shuffle(responses)
        rewards = [round(difflib.SequenceMatcher(None, r, answer).ratio(), 4) for r in responses]
        records.append({"id": f"syn-{i:05d}", "prompt": prompt, "responses": responses, "rewards": rewards})
    return records


FLAWS = ("chatty", "truncated")  # the demonstrator's mistakes, besides answering correctly
SIGN_OFF = " ok!"  # what a chatty demonstration adds after its answer


def demonstrations(sft: list[dict], mix: dict[str, float], seed: int) -> list[dict]:
    """One demonstration per record of :func:`make_synthetic_preferences`, drawn from ``mix`` (``correct`` and each of :data:`FLAWS`).

    Returns native records ``{"prompt", "responses": [demonstration], "kind"}``; ``kind`` says which
    behaviour was drawn (for reports; the trainer ignores it).
    """
    rng = random.Random(f"demos-{seed}")
    kinds = sorted(mix)
    out = []
    for record in sft:
        answer = record["responses"][record["rewards"].index(max(record["rewards"]))]
        kind = rng.choices(kinds, weights=[mix[k] for k in kinds])[0]
        text = {"correct": answer, "chatty": answer + SIGN_OFF,
                "truncated": answer[: max(1, len(answer) // 2)].rstrip()}[kind]  # fmt: skip
        out.append({"prompt": record["prompt"], "responses": [text], "kind": kind})
    return out


def default_train_path(k: int = 4) -> Path:
    """Path of the bundled synthetic dataset with ``k`` responses per prompt.

    Raises:
        DataError: No bundled file has this ``k``.
    """
    path = Path(str(resources.files("nemo_rpo") / "assets" / f"synthetic_prefs_k{k}.jsonl"))
    if k not in BUNDLED_K or not path.is_file():
        raise DataError(str(path), None, "data.train_path",
                        f"no bundled synthetic dataset for k={k} (bundled: k={', k='.join(map(str, BUNDLED_K))}); "
                        f"make one with `python -m nemo_rpo.data.synthetic --k {k} --out FILE` "
                        "and set data.train_path=FILE")  # fmt: skip
    return path


def _make_task(task: str, rng: random.Random) -> tuple[str, str, str, str]:
    """``(prompt, argument, correct answer, alphabet of the answer)`` for one task instance."""
    if task == "sort":
        digits = [rng.choice(string.digits) for _ in range(rng.randint(3, 6))]
        return f"sort: {' '.join(digits)}\n", " ".join(digits), " ".join(sorted(digits)), string.digits
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
    if task == "reverse":
        return f"reverse: {word}\n", word, word[::-1], string.ascii_lowercase
    return f"upper: {word}\n", word, word.upper(), string.ascii_uppercase


def _wrong_answers(arg: str, answer: str, alphabet: str, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct strings that differ from ``answer``, from mild to severe mistakes."""
    slots = [i for i, c in enumerate(answer) if c != " "]  # spaces separate sorted digits; keep them

    def substitute(text: str, count: int) -> str:
        chars = list(text)
        for i in rng.sample(slots, count):
            chars[i] = rng.choice(alphabet.replace(chars[i], ""))
        return "".join(chars)

    def swap_neighbours(text: str) -> str:
        j = rng.randrange(len(slots) - 1)
        a, b = slots[j], slots[j + 1]
        chars = list(text)
        chars[a], chars[b] = chars[b], chars[a]
        return "".join(chars)

    def scramble(text: str) -> str:
        chars = list(text)
        for i in slots:
            chars[i] = rng.choice(alphabet)
        return "".join(chars)

    candidates = [
        substitute(answer, 1),
        substitute(answer, 2),
        swap_neighbours(answer),
        answer[: max(1, len(answer) // 2)].rstrip(),
        arg,
        scramble(answer),
    ]
    rng.shuffle(candidates)
    wrong: list[str] = []
    for text in candidates:
        if text != answer and text not in wrong:
            wrong.append(text)
    while len(wrong) < n:  # too few distinct candidates (a palindrome, equal digits): add random strings
        text = scramble(answer)
        if text != answer and text not in wrong:
            wrong.append(text)
    return wrong[:n]


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic preference file (by default, the bundled one for ``--k``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--num-prompts", type=int, default=BUNDLED_NUM_PROMPTS)
    parser.add_argument("--seed", type=int, default=BUNDLED_SEED)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: nemo_rpo/assets/synthetic_prefs_k{K}.jsonl"
    )
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).resolve().parents[1] / "assets" / f"synthetic_prefs_k{args.k}.jsonl"
    print(write_jsonl(make_synthetic_preferences(args.num_prompts, args.k, args.seed), out))


if __name__ == "__main__":
    main()
