"""The online-step benchmark's workload, shared by ``bench_online.py`` (nemo-rpo) and ``trl_online.py`` (TRL).

Standard library only: ``trl_online.py`` runs in a venv that may lack megatron and nemo-rpo's dependencies.

Token ids stand for themselves in text: id ``i`` is the word ``t<i>`` (the word-level tokenizer both
sides load maps ``"t17 t4031"`` back to ``[17, 4031]``). Id 0 is the pad token, the last id is EOS; prompts
use neither. The reward is a cheap, deterministic function of a response's token ids, read back from the
decoded text each side hands its reward function.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

K = 4  # samples per prompt
PROMPT_LEN = 64  # tokens per prompt


def prompt_ids(num_prompts: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """``num_prompts`` prompts of ``length`` ids each, drawn from ``[1, vocab_size - 2]`` (no pad, no EOS)."""
    if num_prompts < 1 or length < 1 or vocab_size < 3:
        raise ValueError(f"prompt_ids: need num_prompts >= 1, length >= 1, vocab_size >= 3; got "
                         f"{num_prompts}, {length}, {vocab_size}")  # fmt: skip
    rng = random.Random(seed)
    return [[rng.randint(1, vocab_size - 2) for _ in range(length)] for _ in range(num_prompts)]


def ids_to_text(ids: Sequence[int]) -> str:
    """``[17, 4031]`` -> ``"t17 t4031"``."""
    return " ".join(f"t{i}" for i in ids)


def text_to_ids(text: str) -> list[int]:
    """``"t17 t4031"`` -> ``[17, 4031]`` (whitespace-separated words; an empty text has no ids).

    Raises:
        ValueError: a word that is not ``t`` followed by digits (names the word and its position).
    """
    ids = []
    for pos, word in enumerate(text.split()):
        if len(word) < 2 or word[0] != "t" or not word[1:].isdigit():
            raise ValueError(f"text_to_ids: word {pos} ({word!r}) is not a token word t<id>")
        ids.append(int(word[1:]))
    return ids


def reward_of_ids(ids: Sequence[int]) -> float:
    """Mean last decimal digit of the ids, scaled to ``[0, 1]`` (0.0 for an empty response)."""
    if not ids:
        return 0.0
    return sum(i % 10 for i in ids) / (9.0 * len(ids))


def reward_of_text(text: str) -> float:
    """:func:`reward_of_ids` of a decoded response."""
    return reward_of_ids(text_to_ids(text))


def tokens_per_step(num_prompts: int, k: int, prompt_len: int, new_tokens: int) -> dict[str, int]:
    """Tokens one online step handles: ``generated`` (sampled), ``trained`` (prompt + response of every
    sample, through the training forward/backward) and their sum ``total``."""
    generated = num_prompts * k * new_tokens
    trained = num_prompts * k * (prompt_len + new_tokens)
    return {"generated": generated, "trained": trained, "total": generated + trained}
