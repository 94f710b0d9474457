"""Prompt sets for online and iterative training: the prompts alone, tokenized and validated.

Any JSONL whose records have a ``prompt`` field works (our preference formats included), so the same
file can feed offline and online runs. The embedded default is the synthetic task's prompts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import read_jsonl
from nemo_rpo.data.preference import encode_prompt, render_prompt
from nemo_rpo.data.records import _Fields
from nemo_rpo.data.tokenizer import Tokenizer

__all__ = ["Prompt", "load_prompts", "prompts_from_texts"]


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt (what a judge reads) and its tokens (``bos`` first when the tokenizer has one)."""

    text: str
    ids: list[int]


def _encode(text_or_messages, tokenizer: Tokenizer, max_prompt_len: int) -> tuple[Prompt, bool]:
    text = render_prompt(text_or_messages, tokenizer)
    ids = encode_prompt(text_or_messages, tokenizer)
    cut = len(ids) > max_prompt_len
    if cut:  # keep the end, where the question is; bos stays first
        head = ids[:1] if tokenizer.bos_id is not None and ids[0] == tokenizer.bos_id else []
        ids = head + ids[len(ids) - (max_prompt_len - len(head)) :]
    return Prompt(text, ids), cut


def load_prompts(path: str | os.PathLike[str], tokenizer: Tokenizer, *, max_prompt_len: int) -> list[Prompt]:
    """Every record's ``prompt`` (a string or chat messages), rendered and tokenized.

    Raises:
        DataError: a bad line or field (file:line: field: problem), or an empty file.
    """
    prompts = []
    for line, record in read_jsonl(path):
        prompt, _ = _encode(_Fields(record, str(path), line).prompt(), tokenizer, max_prompt_len)
        prompts.append(prompt)
    if not prompts:
        raise DataError(str(path), None, "file", "empty prompt set (no records)")
    return prompts


def prompts_from_texts(texts: Sequence[str], tokenizer: Tokenizer, *, max_prompt_len: int) -> list[Prompt]:
    """Prompts from in-memory strings (the embedded synthetic task)."""
    return [_encode(text, tokenizer, max_prompt_len)[0] for text in texts]
