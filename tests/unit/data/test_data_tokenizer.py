"""The byte tokenizer, prompt rendering, and the HF wrapper's error without transformers."""

from __future__ import annotations

import sys

import pytest

from nemo_rpo.config.schema import TokenizerConfig
from nemo_rpo.data import ByteTokenizer, DataError, Tokenizer, build_tokenizer
from nemo_rpo.data.preference import encode_prompt, render_prompt

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def test_byte_tokenizer_round_trip_and_specials():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    ids = tok.encode("héllo")
    assert ids == list("héllo".encode())
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "héllo"
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)


def test_byte_chat_rendering():
    assert ByteTokenizer().apply_chat_template(CHAT) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"


def test_encode_prompt_adds_bos_once():
    tok = ByteTokenizer()
    assert encode_prompt("ab", tok) == [257, 97, 98]
    assert encode_prompt([{"role": "user", "content": "a"}], tok) == [257, *b"<|user|>\na\n<|assistant|>\n"]


class _NoTemplate(ByteTokenizer):
    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        return None


def test_plain_join_without_chat_template():
    assert render_prompt(CHAT, _NoTemplate()) == "system: be brief\nuser: hi\nassistant: "
    assert render_prompt("as is", _NoTemplate()) == "as is"


def test_build_tokenizer_byte():
    assert isinstance(build_tokenizer(TokenizerConfig()), ByteTokenizer)


def test_hf_without_transformers_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(DataError) as err:
        build_tokenizer(TokenizerConfig(type="hf", path=str(tmp_path)))
    assert (
        str(err.value)
        == f"{tmp_path}: data.tokenizer.type: type=hf needs transformers: pip install 'nemo-rpo[hf]'"
    )
