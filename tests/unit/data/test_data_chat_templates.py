"""Chat data through a Hugging Face tokenizer's template (needs the ``hf`` extra): message responses,
a template that refuses messages, the roles a template knows, and the plain fallback without one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hf_tiny import tiny_tokenizer  # noqa: E402

from nemo_rpo.config.schema import DataConfig  # noqa: E402
from nemo_rpo.data import DataError, HFTokenizer, load_preference_dataset  # noqa: E402
from nemo_rpo.data.tokenizer import CHAT_ROLES, template_roles  # noqa: E402

# Qwen-like: each turn ends with the eos token </s>, so a rendered response already ends with eos.
TURNS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATIONAL = {"prompt": [{"role": "user", "content": "sort 3 1 2"}],
                  "chosen": [{"role": "assistant", "content": "1 2 3"}],
                  "rejected": [{"role": "assistant", "content": "3 2 1"}]}  # fmt: skip


def hf_tokenizer(tmp_path: Path, template: str | None) -> HFTokenizer:
    tok = tiny_tokenizer()
    tok.chat_template = template
    tok.save_pretrained(str(tmp_path / "tok"))
    return HFTokenizer(str(tmp_path / "tok"))


def load(tmp_path: Path, rows: list[dict], tok: HFTokenizer):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, load_preference_dataset(path, DataConfig(), tok, k=2, max_seq_len=128, require_rewards=False)


def test_message_responses_are_what_the_template_adds_after_the_prompt(tmp_path):
    tok = hf_tokenizer(tmp_path, TURNS)
    _, ds = load(tmp_path, [CONVERSATIONAL], tok)
    (ex,) = ds.examples
    assert ex.prompt_ids == [
        tok.bos_id,
        *tok.encode("<|im_start|>user\nsort 3 1 2</s><|im_start|>assistant\n"),
    ]
    # the template's own </s> ends each response: no second eos is appended
    assert ex.response_ids == [tok.encode("1 2 3</s>"), tok.encode("3 2 1</s>")]
    assert ex.response_ids[0][-1] == tok.eos_id


def test_a_template_that_refuses_the_messages_is_one_line(tmp_path):
    refuses_system = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    tok = hf_tokenizer(tmp_path, refuses_system)
    row = {**CONVERSATIONAL, "prompt": [{"role": "system", "content": "x"}, *CONVERSATIONAL["prompt"]]}
    with pytest.raises(DataError) as err:
        load(tmp_path, [row], tok)
    path = tmp_path / "prefs.jsonl"
    assert (
        str(err.value)
        == f"{path}:1: prompt: the chat template refuses these messages: System role not supported"
    )


def test_roles_the_template_tests_for_are_known_and_others_are_not(tmp_path):
    llama_like = (
        "{% for m in messages %}{% if m['role'] == 'ipython' %}<|ipython|>{% elif m.role in ['developer'] %}"
        "<|dev|>{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert template_roles(llama_like) == {"ipython", "developer"}
    tok = hf_tokenizer(tmp_path, llama_like)
    assert tok.chat_roles == CHAT_ROLES | {"ipython", "developer"}
    tool_turn = {
        **CONVERSATIONAL,
        "prompt": [*CONVERSATIONAL["prompt"], {"role": "ipython", "content": "ok"}],
    }
    load(tmp_path, [tool_turn], tok)  # reads
    wizard = {**CONVERSATIONAL, "prompt": [{"role": "wizard", "content": "hi"}]}
    with pytest.raises(DataError) as err:
        load(tmp_path, [wizard], tok)
    assert str(err.value).endswith(
        ":1: prompt[0].role: 'wizard' is not a role the chat template knows "
        "(assistant, developer, ipython, system, tool, user)"
    )


def test_without_a_template_messages_use_the_plain_fallback(tmp_path):
    tok = hf_tokenizer(tmp_path, None)
    _, ds = load(tmp_path, [CONVERSATIONAL], tok)
    (ex,) = ds.examples
    assert ex.prompt_ids == [tok.bos_id, *tok.encode("user: sort 3 1 2\nassistant: ")]
    assert ex.response_ids == [[*tok.encode("1 2 3\n"), tok.eos_id], [*tok.encode("3 2 1\n"), tok.eos_id]]
