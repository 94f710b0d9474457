"""Offline preference datasets: validated records → token ids, with explicit truncation and stats.

Each example's sequences are ``[bos] + prompt + response + [eos]`` (``bos`` only when the tokenizer
has one; ``eos`` unless the response's own tokens already end with it, as TRL adds it). Prompts and
responses are tokenized separately, as NeMo-Aligner and TRL do, so the prompt/response boundary is
exact. Chat prompts are rendered through the tokenizer's chat template (a plain ``role: content``
fallback without one); message responses are rendered with the prompt, as TRL does: the response is
what ``template(prompt + [response])`` adds after the prompt's rendering with the generation prompt
(their shared beginning, when a template renders the two differently). Length limits, in order:

1. A prompt longer than ``max_prompt_len`` tokens is cut from the left (a leading ``bos`` is kept).
   The cap is at most ``max_seq_len - 1`` so a prompt always leaves room for one response token.
2. A prompt + response longer than ``max_seq_len`` is handled by ``data.truncation``: ``truncate``
   cuts the response from the right (its ``eos`` is lost), ``drop`` drops the whole example,
   ``error`` raises a :class:`DataError` naming the line and response.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data.errors import DataError
from nemo_rpo.data.records import Message, PreferenceRecord, Prompt, Response, read_preference_records
from nemo_rpo.data.tokenizer import ChatTemplateError, Tokenizer

TRUNCATION_MODES = ("truncate", "drop", "error")


@dataclass
class PreferenceExample:
    """One prompt with its K tokenized responses.

    Attributes:
        index: Row of this example in its dataset (0..N-1); batches carry it as ``index``.
        prompt_ids: Prompt tokens, starting with ``bos`` when the tokenizer has one.
        response_ids: K responses, best first, each ending with ``eos`` unless truncated.
        rewards: K rewards aligned with ``response_ids``, or None when the data has none.
        kl_response_ids: KTO's mismatched response (see :func:`add_kl_pairs`), or None.
    """

    index: int
    prompt_ids: list[int]
    response_ids: list[list[int]]
    rewards: list[float] | None
    kl_response_ids: list[int] | None = None

    @property
    def sequence_responses(self) -> list[list[int]]:
        """The responses a batch holds a sequence for: the K responses, then the KL one if any."""
        return [*self.response_ids, *([self.kl_response_ids] if self.kl_response_ids is not None else [])]


@dataclass
class DatasetStats:
    """What building a dataset did, for the caller to report.

    Attributes:
        num_records: Records read from the file.
        num_examples: Examples kept.
        num_prompts_truncated: Kept examples whose prompt was cut to ``max_prompt_len``.
        num_truncated: Kept examples with at least one response cut to fit ``max_seq_len``.
        num_dropped: Examples dropped for exceeding ``max_seq_len`` (``truncation=drop``).
        max_prompt_tokens: Longest kept prompt.
        mean_prompt_tokens: Mean kept prompt length.
        max_seq_tokens: Longest kept prompt + response.
        mean_seq_tokens: Mean kept prompt + response, over all K sequences of all examples.
    """

    num_records: int = 0
    num_examples: int = 0
    num_prompts_truncated: int = 0
    num_truncated: int = 0
    num_dropped: int = 0
    max_prompt_tokens: int = 0
    mean_prompt_tokens: float = 0.0
    max_seq_tokens: int = 0
    mean_seq_tokens: float = 0.0

    def summary(self) -> str:
        """One log line, e.g. ``512 examples (0 dropped, 3 truncated, 0 prompts cut); tokens: ...``."""
        return (
            f"{self.num_examples} examples ({self.num_dropped} dropped, {self.num_truncated} truncated, "
            f"{self.num_prompts_truncated} prompts cut); tokens: prompt max {self.max_prompt_tokens} "
            f"mean {self.mean_prompt_tokens:.1f}, sequence max {self.max_seq_tokens} mean {self.mean_seq_tokens:.1f}"
        )


@dataclass
class PreferenceDataset:
    """Tokenized examples with where they came from.

    Attributes:
        path: Source file.
        format: ``native``, ``nemo_aligner`` or ``trl``.
        examples: The examples; ``examples[i].index == i``.
        stats: Counts and lengths from building it.
    """

    path: str
    format: str
    examples: list[PreferenceExample]
    stats: DatasetStats

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> PreferenceExample:
        return self.examples[index]

    @property
    def has_rewards(self) -> bool:
        """Whether the examples carry explicit rewards (False for trl, and nemo_aligner without rewards)."""
        return self.examples[0].rewards is not None

    def require_rewards(self, loss_name: str) -> None:
        """Raise unless the data has rewards; call it for losses that use them.

        Raises:
            DataError: ``<path>: rewards: trl data has no rewards; loss <loss_name> needs them ...``.
        """
        if not self.has_rewards:
            raise DataError(self.path, None, "rewards",
                            f"{self.format} data has no rewards; loss {loss_name} needs them "
                            "(use the native or nemo_aligner format)")  # fmt: skip


def render_chat(messages: list[Message], tokenizer: Tokenizer, *, add_generation_prompt: bool = True) -> str:
    """Chat ``messages`` through the tokenizer's chat template.

    Without a chat template, messages are joined as ``role: content`` lines, followed by
    ``assistant: `` with ``add_generation_prompt`` (the plain fallback).

    Raises:
        ChatTemplateError: The template refuses these messages.
    """
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    if rendered is not None:
        return rendered
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + (
        "assistant: " if add_generation_prompt else ""
    )


def render_prompt(prompt: Prompt, tokenizer: Tokenizer) -> str:
    """Prompt text: a string as is; chat messages through :func:`render_chat` with the generation prompt."""
    return prompt if isinstance(prompt, str) else render_chat(prompt, tokenizer)


def render_record(
    prompt: Prompt, responses: Sequence[Response], tokenizer: Tokenizer
) -> tuple[str, list[str]]:
    """Prompt text and response texts of one record (the module docstring says how messages render)."""
    prompt_text = render_prompt(prompt, tokenizer)
    if isinstance(prompt, str) or not any(isinstance(r, dict) for r in responses):
        return prompt_text, [r if isinstance(r, str) else r["content"] for r in responses]
    fulls = [render_chat([*prompt, r], tokenizer, add_generation_prompt=False) for r in responses]  # type: ignore[list-item]
    for full in fulls:  # the prompt is what every prompt + response rendering starts with
        prompt_text = prompt_text[: _shared_length(prompt_text, full)]
    return prompt_text, [full[len(prompt_text) :] for full in fulls]


def unknown_role(messages: list[Message], tokenizer: Tokenizer) -> int | None:
    """Index of the first message whose role the tokenizer's chat rendering does not know, or None."""
    return next((i for i, m in enumerate(messages) if m["role"] not in tokenizer.chat_roles), None)


def role_problem(role: str, tokenizer: Tokenizer) -> str:
    """The error text for a message of unknown ``role``."""
    return f"{role!r} is not a role the chat template knows ({', '.join(sorted(tokenizer.chat_roles))})"


def encode_prompt(prompt: Prompt, tokenizer: Tokenizer) -> list[int]:
    """Prompt tokens with ``bos`` in front (once: chat templates often write it themselves)."""
    return _with_bos(tokenizer.encode(render_prompt(prompt, tokenizer)), tokenizer)


def encode_record(
    rec: PreferenceRecord, tokenizer: Tokenizer, *, path: str
) -> tuple[list[int], list[list[int]]]:
    """Prompt tokens (``bos`` first) and response tokens (``eos`` last) of one record, before length limits.

    Raises:
        DataError: A message role the chat template does not know, or the template refuses the messages.
    """
    if isinstance(rec.prompt, list):
        i = unknown_role(rec.prompt, tokenizer)
        if i is not None:
            raise rec.error(
                path, f"{rec.prompt_field}[{i}].role", role_problem(rec.prompt[i]["role"], tokenizer)
            )
    try:
        prompt_text, response_texts = render_record(rec.prompt, rec.responses, tokenizer)
    except ChatTemplateError as err:
        raise rec.error(path, rec.prompt_field, f"the chat template refuses these messages: {err}") from err
    prompt_ids = _with_bos(tokenizer.encode(prompt_text), tokenizer)
    response_ids = []
    for text in response_texts:
        ids = tokenizer.encode(text)
        response_ids.append(ids if ids[-1:] == [tokenizer.eos_id] else [*ids, tokenizer.eos_id])
    return prompt_ids, response_ids


def _with_bos(ids: list[int], tokenizer: Tokenizer) -> list[int]:
    bos = tokenizer.bos_id
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def _shared_length(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_records(
    records: Sequence[PreferenceRecord],
    tokenizer: Tokenizer,
    *,
    max_prompt_len: int,
    max_seq_len: int,
    truncation: str,
    path: str,
) -> tuple[list[PreferenceExample], DatasetStats]:
    """Tokenize records and apply the length limits described in the module docstring.

    Args:
        records: Validated records.
        tokenizer: The tokenizer.
        max_prompt_len: Longest prompt in tokens (``data.max_prompt_len``).
        max_seq_len: Longest prompt + response in tokens (``model.max_seq_len``).
        truncation: ``truncate``, ``drop`` or ``error``.
        path: Source file, for errors.

    Returns:
        The kept examples, indexed 0..N-1, and the statistics.

    Raises:
        DataError: A sequence is too long with ``truncation=error``, or every example was dropped.
    """
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    prompt_cap = min(max_prompt_len, max_seq_len - 1)
    stats = DatasetStats(num_records=len(records))
    examples: list[PreferenceExample] = []
    for rec in records:
        prompt_ids, responses = encode_record(rec, tokenizer, path=path)
        if not prompt_ids:  # without bos the first label would have no input to predict it from
            raise rec.error(path, "prompt", "encodes to no tokens")
        prompt_ids, prompt_cut = _cut_prompt(prompt_ids, prompt_cap, tokenizer.bos_id)
        room = max_seq_len - len(prompt_ids)
        too_long = [i for i, ids in enumerate(responses) if len(ids) > room]
        if too_long and truncation == "error":
            i = too_long[0]
            raise rec.error(path, rec.response_fields[i],
                            f"prompt + response is {len(prompt_ids) + len(responses[i])} tokens, over "
                            f"model.max_seq_len={max_seq_len} (data.truncation=error)")  # fmt: skip
        if too_long and truncation == "drop":
            stats.num_dropped += 1
            continue
        stats.num_truncated += bool(too_long)
        stats.num_prompts_truncated += prompt_cut
        responses = [ids[:room] for ids in responses]
        examples.append(PreferenceExample(len(examples), prompt_ids, responses, rec.rewards))
    if not examples:
        raise DataError(path, None, "data.truncation",
                        f"all {len(records)} examples were dropped: each has a prompt + response longer "
                        f"than model.max_seq_len={max_seq_len}")  # fmt: skip
    _fill_length_stats(stats, examples)
    return examples, stats


def load_preference_dataset(
    path: str | os.PathLike[str],
    cfg: DataConfig,
    tokenizer: Tokenizer,
    *,
    k: int,
    max_seq_len: int,
    require_rewards: bool = True,
) -> PreferenceDataset:
    """Read, validate and tokenize a preference JSONL file or Hugging Face dataset.

    Args:
        path: The file or dataset (``cfg.train_path``, ``cfg.val_path`` or :func:`default_train_path`).
        cfg: ``format``, ``split``, ``columns``, ``max_prompt_len`` and ``truncation`` are used.
        tokenizer: The tokenizer.
        k: Responses per prompt.
        max_seq_len: ``model.max_seq_len``.
        require_rewards: Whether the caller reads rewards (the loss's ``LossSpec.needs_rewards``);
            when False, nemo_aligner data may come without them.

    Raises:
        DataError: Naming file, line (or row) and field of the first problem.
    """
    records, fmt = read_preference_records(path, k=k, fmt=cfg.format, require_rewards=require_rewards,
                                           split=cfg.split, renames=cfg.columns.renames())  # fmt: skip
    examples, stats = tokenize_records(records, tokenizer, max_prompt_len=cfg.max_prompt_len,
                                       max_seq_len=max_seq_len, truncation=cfg.truncation, path=str(path))  # fmt: skip
    return PreferenceDataset(str(path), fmt, examples, stats)


def add_kl_pairs(
    examples: Sequence[PreferenceExample], *, max_seq_len: int | None = None
) -> list[PreferenceExample]:
    """Give each example KTO's mismatched response: response 0 of example ``(i + 1) mod N``.

    The pairing is fixed here, at build time, so reference log-probs of the KL sequences can be
    cached like the others.

    Args:
        examples: The examples, in dataset order.
        max_seq_len: When given, a mismatched response is cut from the right to fit after the prompt.

    Returns:
        New examples with ``kl_response_ids`` set; the inputs are unchanged.

    Raises:
        ValueError: Fewer than 2 examples (an example cannot be mismatched with itself).
    """
    n = len(examples)
    if n < 2:
        raise ValueError(f"KL pairs need at least 2 examples, got {n}")
    paired = []
    for i, ex in enumerate(examples):
        kl_ids = list(examples[(i + 1) % n].response_ids[0])
        if max_seq_len is not None:
            kl_ids = kl_ids[: max_seq_len - len(ex.prompt_ids)]
        paired.append(dataclasses.replace(ex, kl_response_ids=kl_ids))
    return paired


def _cut_prompt(ids: list[int], cap: int, bos_id: int | None) -> tuple[list[int], bool]:
    """Keep the last ``cap`` tokens of a prompt (and its leading ``bos``); return whether it was cut."""
    if len(ids) <= cap:
        return ids, False
    head = [ids[0]] if bos_id is not None and ids[0] == bos_id and cap > 1 else []
    return head + ids[len(ids) - (cap - len(head)) :], True


def _fill_length_stats(stats: DatasetStats, examples: Sequence[PreferenceExample]) -> None:
    prompt_lens = [len(ex.prompt_ids) for ex in examples]
    seq_lens = [len(ex.prompt_ids) + len(r) for ex in examples for r in ex.response_ids]
    stats.num_examples = len(examples)
    stats.max_prompt_tokens = max(prompt_lens)
    stats.mean_prompt_tokens = sum(prompt_lens) / len(prompt_lens)
    stats.max_seq_tokens = max(seq_lens)
    stats.mean_seq_tokens = sum(seq_lens) / len(seq_lens)
