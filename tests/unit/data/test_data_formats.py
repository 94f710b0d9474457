"""The peers' shapes as they are: NeMo-Aligner without rewards and in chat form, TRL's implicit prompt
and conversational rows, chat rendering of message responses, and the roles a template knows.

Token ids are the byte tokenizer's (bytes, bos 257, eos 258), so expected sequences are written as text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import ByteTokenizer, DataError, load_preference_dataset, read_preference_records
from nemo_rpo.data.preference import tokenize_records
from nemo_rpo.data.prompts import load_prompts
from nemo_rpo.data.records import PreferenceRecord, implicit_prompt_length

FIXTURES = Path(__file__).parents[2] / "fixtures" / "formats"
BOS, EOS = 257, 258


def write(tmp_path: Path, rows: list[dict], name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(path: Path, *, require_rewards: bool = False, k: int = 2):
    return load_preference_dataset(path, DataConfig(), ByteTokenizer(), k=k, max_seq_len=128,
                                   require_rewards=require_rewards)  # fmt: skip


def text(ids: list[int]) -> str:
    """Byte ids as text, with <s> and </s> for bos and eos."""
    return "".join("<s>" if i == BOS else "</s>" if i == EOS else chr(i) for i in ids)


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


NEMO_PLAIN = {"prompt": "p", "chosen_response": "c", "rejected_response": "r"}


def test_nemo_aligner_without_rewards_reads_for_losses_without_rewards():
    ds = load(FIXTURES / "nemo_aligner_plain.jsonl")
    assert (ds.format, ds.has_rewards, len(ds)) == ("nemo_aligner", False, 5)
    assert text(ds[0].prompt_ids).startswith("<s><extra_id_0>System\n\n<extra_id_1>User\nWhat is 2+3?")
    assert [text(r) for r in ds[0].response_ids] == ["5\n<extra_id_1></s>", "6\n<extra_id_1></s>"]


def test_nemo_aligner_without_rewards_is_refused_where_the_loss_reads_them():
    path = FIXTURES / "nemo_aligner_plain.jsonl"
    with pytest.raises(DataError) as err:
        load(path, require_rewards=True)
    assert str(err.value) == f"{path}:1: chosen_reward: missing (rewards are never defaulted)"


@pytest.mark.parametrize("rows, expected", [
    ([NEMO_PLAIN, {**NEMO_PLAIN, "chosen_reward": 1}],
     ":2: chosen_reward: present, but the first record has no rewards; give every record rewards or none"),
    ([{**NEMO_PLAIN, "chosen_reward": 1, "rejected_reward": 0}, NEMO_PLAIN],
     ":2: chosen_reward: missing (rewards are never defaulted)"),
])  # fmt: skip
def test_rewards_on_some_records_only_is_an_error(tmp_path, rows, expected):
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == f"{path}{expected}"


def test_nemo_aligner_chat_form_renders_prompt_and_responses_through_the_template():
    ds = load(FIXTURES / "nemo_aligner_chat.jsonl", require_rewards=True)
    assert (ds.format, ds[0].rewards) == ("nemo_aligner", [4.0, 0.0])
    assert text(ds[0].prompt_ids) == "<s><|system|>\nAnswer briefly.\n<|user|>\nWhat is 2+3?\n<|assistant|>\n"
    # template(prompt + [response]) less the prompt's rendering: the content and the turn's end
    assert [text(r) for r in ds[0].response_ids] == ["5\n</s>", "6\n</s>"]


def test_trl_implicit_prompt_is_the_shared_beginning_less_a_trailing_space():
    ds = load(FIXTURES / "trl_implicit.jsonl")
    assert ds.format == "trl" and not ds.has_rewards
    assert text(ds[0].prompt_ids) == "<s>\n\nHuman: What is 2+3?\n\nAssistant:"
    assert [text(r) for r in ds[0].response_ids] == [" 5.</s>", " Maybe 6.</s>"]


@pytest.mark.parametrize("chosen, rejected, expected", [
    ("Q: hi A: yes", "Q: hi A: no", 8),  # TRL: the space before the responses goes with them
    ("Q: x\nA:yes", "Q: x\nA:no", 7),  # no space: cut where they differ
    ("ab", "abc", 2),
])  # fmt: skip
def test_implicit_prompt_length_follows_trl(chosen, rejected, expected):
    assert implicit_prompt_length(chosen, rejected) == expected


def test_trl_conversational_explicit_and_implicit_prompts_give_the_same_examples():
    explicit = load(FIXTURES / "trl_conversational.jsonl")
    implicit = load(FIXTURES / "trl_conversational_implicit.jsonl")
    assert [(e.prompt_ids, e.response_ids) for e in explicit] == [
        (e.prompt_ids, e.response_ids) for e in implicit
    ]
    assert text(explicit[0].prompt_ids) == "<s><|user|>\nWhat is 2+3?\n<|assistant|>\n"
    assert [text(r) for r in explicit[0].response_ids] == ["5\n</s>", "6\n</s>"]


def test_implicit_conversational_prompt_is_the_shared_leading_messages(tmp_path):
    row = {"chosen": [user("a"), assistant("b"), user("c"), assistant("yes")],
           "rejected": [user("a"), assistant("b"), user("c"), assistant("no")]}  # fmt: skip
    (rec,), fmt = read_preference_records(write(tmp_path, [row]), k=2, require_rewards=False)
    assert fmt == "trl"
    assert rec.prompt == [user("a"), assistant("b"), user("c")]
    assert rec.responses == [assistant("yes"), assistant("no")]


def test_a_response_ending_with_eos_gets_no_second_one():
    class DollarIsEos(ByteTokenizer):
        def encode(self, text: str) -> list[int]:
            return [EOS if t == ord("$") else t for t in super().encode(text)]

    rec = PreferenceRecord(
        line=1, prompt="p", responses=["a$", "b"], rewards=None, response_fields=["c", "r"]
    )
    (ex,), _ = tokenize_records(
        [rec], DollarIsEos(), max_prompt_len=8, max_seq_len=16, truncation="error", path="x"
    )
    assert [text(r) for r in ex.response_ids] == ["a</s>", "b</s>"]


ROLE_CASES = [
    ("unknown-prompt-role", {"prompt": [{"role": "wizard", "content": "hi"}], "chosen": "c", "rejected": "r"},
     ":1: prompt[0].role: 'wizard' is not a role the chat template knows (assistant, system, tool, user)"),
    ("unknown-implicit-role", {"chosen": [user("a"), {"role": "wizard", "content": "b"}, assistant("c")],
                               "rejected": [user("a"), {"role": "wizard", "content": "b"}, assistant("d")]},
     ":1: chosen[1].role: 'wizard' is not a role the chat template knows (assistant, system, tool, user)"),
]  # fmt: skip

BAD_SHAPES = [
    *ROLE_CASES,
    ("response-role", {"prompt": [user("q")], "chosen_response": {"role": "user", "content": "c"},
                       "rejected_response": assistant("r")},
     ":1: chosen_response.role: expected 'assistant', got 'user'"),
    ("response-empty-message", {"prompt": [user("q")], "chosen_response": assistant(" "),
                                "rejected_response": assistant("r")}, ":1: chosen_response: empty"),
    ("mixed-response-forms", {"prompt": [user("q")], "chosen": [assistant("c")], "rejected": "r"},
     ":1: rejected: expected an assistant message like chosen, got a string"),
    ("message-response-string-prompt", {"prompt": "q", "chosen": [assistant("c")], "rejected": [assistant("r")]},
     ":1: chosen: an assistant message needs a prompt of messages, got a string prompt"),
    ("implicit-no-shared-text", {"chosen": "yes", "rejected": "no"},
     ":1: prompt: missing, and chosen and rejected share no beginning to take it from"),
    ("implicit-identical", {"chosen": "Q: a", "rejected": "Q: a"},
     ":1: chosen: empty once the prompt it shares with the other response is removed"),
    ("implicit-mixed-types", {"chosen": "Q: a", "rejected": [user("Q"), assistant("a")]},
     ":1: rejected: expected a string like chosen, got array"),
    ("implicit-no-shared-message", {"chosen": [user("a"), assistant("b")], "rejected": [user("x"), assistant("b")]},
     ":1: prompt: missing, and chosen and rejected share no leading message to take it from"),
    ("implicit-two-turns-left", {"chosen": [user("a"), assistant("b"), user("c"), assistant("d")],
                                 "rejected": [user("a"), assistant("x"), user("c"), assistant("d")]},
     ":1: chosen: expected one assistant message after the 1 prompt messages it shares with the other "
     "response, got 3"),
    ("implicit-ends-with-user", {"chosen": [user("a"), user("b")], "rejected": [user("a"), user("c")]},
     ":1: chosen[1].role: expected 'assistant', got 'user'"),
]  # fmt: skip


@pytest.mark.parametrize("row, expected", [c[1:] for c in BAD_SHAPES], ids=[c[0] for c in BAD_SHAPES])
def test_bad_shapes_are_one_line(tmp_path, row, expected):
    path = write(tmp_path, [row])
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == f"{path}{expected}"


def test_implicit_prompt_file_decides_at_its_first_record(tmp_path):
    path = write(
        tmp_path, [{"chosen": "Q: a", "rejected": "Q: b"}, {"prompt": "Q:", "chosen": "a", "rejected": "b"}]
    )
    with pytest.raises(DataError) as err:
        load(path)
    assert str(err.value) == (f"{path}:2: prompt: present, but the first record has none (its prompt is implicit); "
                              "give every record a prompt or none")  # fmt: skip


def test_online_prompt_sets_check_roles_too(tmp_path):
    path = write(tmp_path, [{"prompt": [user("q")]}, {"prompt": [{"role": "wizard", "content": "q"}]}])
    with pytest.raises(DataError) as err:
        load_prompts(path, ByteTokenizer(), max_prompt_len=64)
    assert str(err.value) == (
        f"{path}:2: prompt[0].role: 'wizard' is not a role the chat template knows (assistant, system, tool, user)"
    )
