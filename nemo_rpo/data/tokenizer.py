"""Tokenizers behind one small protocol: the built-in byte tokenizer and a local Hugging Face one.

``encode`` never adds special tokens; the dataset adds ``bos`` (when the tokenizer has one) before
the prompt and ``eos`` after each response, so both implementations produce the same layout.

Chat messages may only use roles the rendering knows (``chat_roles``): ``system``, ``user``,
``assistant`` and ``tool``, plus, for a Hugging Face chat template, every role the template compares
``role`` with (Llama 3.1's ``ipython``). Anything else (a typo such as ``wizard``) is a data error,
not a turn the template renders blindly or drops.
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol, runtime_checkable

from nemo_rpo.config.schema import TokenizerConfig
from nemo_rpo.data.errors import DataError

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
# `role == 'x'`, `role'] != "x"`, `role in ['x', "y"]`: the roles a Jinja chat template tests for.
_ROLE_TEST = re.compile(r"""role['"\]]*\s*(?:==|!=)\s*['"]([\w-]+)['"]""")
_ROLE_IN = re.compile(r"""role['"\]]*\s+in\s+[\[(]([^\])]*)[\])]""")


class ChatTemplateError(ValueError):
    """A chat template refused to render a list of messages (its own ``raise_exception``, or a Jinja error)."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the data layer and generation need from a tokenizer."""

    vocab_size: int
    eos_id: int
    pad_id: int
    bos_id: int | None
    chat_roles: frozenset[str]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens are skipped."""
        ...

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str | None:
        """Text of chat ``messages``; with ``add_generation_prompt`` it ends where the assistant's reply starts.

        Returns None when the tokenizer has no chat template.

        Raises:
            ChatTemplateError: The template refuses these messages.
        """
        ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then ``pad`` = 256, ``bos`` = 257, ``eos`` = 258.

    Its fixed chat rendering writes each message as ``<|role|>\\n{content}\\n`` and ends with
    ``<|assistant|>\\n``; the markers are plain bytes, not special tokens.
    """

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259
    chat_roles = CHAT_ROLES

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Text of the byte ids in ``ids`` (special ids skipped, broken UTF-8 replaced)."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str | None:
        """``<|role|>\\n{content}\\n`` per message, then ``<|assistant|>\\n`` (``add_generation_prompt``)."""
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return turns + ("<|assistant|>\n" if add_generation_prompt else "")


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local directory (needs the ``hf`` extra), or from the one
    ``.gguf`` file of a directory without tokenizer files.

    ``bos_id`` is the tokenizer's BOS only when the tokenizer itself prepends it (Llama yes, GPT-2
    and Qwen no), so sequences look as they did in pretraining. ``pad_id`` falls back to ``eos_id``.
    """

    def __init__(self, path: str) -> None:
        """Load the tokenizer in ``path``.

        Raises:
            DataError: transformers is not installed, ``path`` is not a directory, or loading fails.
        """
        try:
            from transformers import AutoTokenizer
        except ImportError as err:
            raise DataError(path, None, "data.tokenizer.type",
                            "type=hf needs transformers: pip install 'nemo-rpo[hf]'") from err  # fmt: skip
        if not os.path.isdir(path):
            raise DataError(path, None, "data.tokenizer.path", "not a directory")
        # A directory holding only a .gguf model (no tokenizer files): transformers reads the tokenizer from it.
        ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        has_files = any(
            os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")
        )
        extra = {"gguf_file": ggufs[0]} if len(ggufs) == 1 and not has_files else {}
        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True, **extra)
        except Exception as err:  # transformers raises many types; all mean "cannot load this directory"
            raise DataError(path, None, "data.tokenizer.path", f"cannot load a tokenizer: {err}") from err
        if self._tok.eos_token_id is None:
            raise DataError(path, None, "data.tokenizer.path", "the tokenizer defines no eos token")
        self.eos_id: int = self._tok.eos_token_id
        self.pad_id: int = self._tok.pad_token_id if self._tok.pad_token_id is not None else self.eos_id
        bos = self._tok.bos_token_id
        adds_bos = bos is not None and self._tok.encode("a", add_special_tokens=True)[:1] == [bos]
        self.bos_id: int | None = bos if adds_bos else None
        self.vocab_size: int = len(self._tok)
        self.chat_roles: frozenset[str] = CHAT_ROLES | template_roles(
            getattr(self._tok, "chat_template", None)
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added (tokens spelled in the text are kept)."""
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens skipped."""
        return self._tok.decode(ids, skip_special_tokens=True)

    def apply_chat_template(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str | None:
        """The tokenizer's chat template, or None if it has none."""
        if not getattr(self._tok, "chat_template", None):
            return None
        try:
            text: Any = self._tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as err:  # Jinja templates raise what they like (raise_exception, TemplateError, ...)
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ChatTemplateError(first) from err
        return str(text)


def template_roles(template: str | dict | None) -> frozenset[str]:
    """The roles a Jinja chat template tests ``role`` against (several named templates: all of them)."""
    if isinstance(template, dict):
        template = "\n".join(str(t) for t in template.values())
    if not template:
        return frozenset()
    roles = set(_ROLE_TEST.findall(template))
    for group in _ROLE_IN.findall(template):
        roles.update(re.findall(r"""['"]([\w-]+)['"]""", group))
    return frozenset(roles)


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """The tokenizer selected by ``data.tokenizer``."""
    if cfg.type == "byte":
        return ByteTokenizer()
    if cfg.type == "hf":
        assert cfg.path is not None  # TokenizerConfig.__post_init__ requires it for type=hf
        return HFTokenizer(cfg.path)
    raise ValueError(f"unknown tokenizer type {cfg.type!r}")
