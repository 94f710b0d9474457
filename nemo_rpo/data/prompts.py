"""Prompt sets for online and iterative training: the prompts alone, tokenized and validated.

Any JSONL file or Hugging Face dataset whose records have a ``prompt`` field works (our preference
formats with an explicit prompt included), so the same data can feed offline and online runs. The
embedded default is the synthetic task's prompts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nemo_rpo.data.errors import DataError
from nemo_rpo.data.preference import encode_prompt, render_prompt, role_problem, unknown_role
from nemo_rpo.data.records import _Fields
from nemo_rpo.data.sources import open_source
from nemo_rpo.data.tokenizer import ChatTemplateError, Tokenizer

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


def load_prompts(
    path: str | os.PathLike[str],
    tokenizer: Tokenizer,
    *,
    max_prompt_len: int,
    split: str = "train",
    renames: Mapping[str, str] | None = None,
) -> list[Prompt]:
    """Every record's ``prompt`` (a string or chat messages), rendered and tokenized.

    Args:
        path: A JSONL file or Hugging Face dataset (:mod:`nemo_rpo.data.sources`).
        tokenizer: The tokenizer.
        max_prompt_len: Longer prompts keep their end (and ``bos``).
        split: The split of a Hugging Face dataset directory.
        renames: ``{column: field}`` (``data.columns``).

    Raises:
        DataError: a bad line or field (file:line: field: problem), or an empty file.
    """
    prompts = []
    source = open_source(path, split=split, renames=renames)
    for line, record in source:
        fields = _Fields(record, source.path, line, source.unit)
        text_or_messages = fields.prompt()
        if isinstance(text_or_messages, list):
            i = unknown_role(text_or_messages, tokenizer)
            if i is not None:
                raise fields.error(f"prompt[{i}].role", role_problem(text_or_messages[i]["role"], tokenizer))
        try:
            prompt, _ = _encode(text_or_messages, tokenizer, max_prompt_len)
        except ChatTemplateError as err:
            raise fields.error("prompt", f"the chat template refuses these messages: {err}") from err
        prompts.append(prompt)
    if not prompts:
        raise DataError(str(path), None, "file", "empty prompt set (no records)")
    return prompts


def prompts_from_texts(texts: Sequence[str], tokenizer: Tokenizer, *, max_prompt_len: int) -> list[Prompt]:
    """Prompts from in-memory strings (the embedded synthetic task)."""
    return [_encode(text, tokenizer, max_prompt_len)[0] for text in texts]
