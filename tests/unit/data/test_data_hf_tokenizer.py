"""The HF tokenizer wrapper on a tiny word-level tokenizer built offline (needs the ``hf`` extra)."""

from __future__ import annotations

import pytest

# Imported at collection, so the one-off cost of importing transformers is not charged to a test.
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from nemo_rpo.config.schema import TokenizerConfig  # noqa: E402
from nemo_rpo.data import DataError, HFTokenizer, Tokenizer, build_tokenizer  # noqa: E402
from nemo_rpo.data.preference import encode_prompt  # noqa: E402


def _save_tiny_hf_tokenizer(path, chat_template: str | None) -> None:
    """A word-level HF tokenizer that prepends <s>, like Llama's, saved to ``path``."""
    words = ["<unk>", "<s>", "</s>", "<pad>", "user", "assistant", "hello", "world"]
    raw = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = chat_template
    tok.save_pretrained(str(path))


def test_hf_tokenizer_chat_template_and_specials(tmp_path):
    template = (
        "<s>{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant{% endif %}"
    )
    _save_tiny_hf_tokenizer(tmp_path, template)
    tok = build_tokenizer(TokenizerConfig(type="hf", path=str(tmp_path)))
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 8)
    assert tok.encode("hello world") == [6, 7]
    messages = [{"role": "user", "content": "hello"}]
    assert tok.apply_chat_template(messages) == "<s>user hello assistant"
    assert encode_prompt(messages, tok) == [1, 4, 6, 5]  # the template's <s> is not doubled
    assert encode_prompt("world", tok) == [1, 7]
    assert tok.decode([1, 6, 7, 2]) == "hello world"


def test_hf_tokenizer_without_chat_template(tmp_path):
    _save_tiny_hf_tokenizer(tmp_path, None)
    tok = HFTokenizer(str(tmp_path))
    assert tok.apply_chat_template([{"role": "user", "content": "hello"}]) is None


def test_hf_tokenizer_bad_directory(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DataError) as err:
        HFTokenizer(str(missing))
    assert str(err.value) == f"{missing}: data.tokenizer.path: not a directory"
