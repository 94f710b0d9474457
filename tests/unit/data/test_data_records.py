"""Reading the three preference formats: detection, chat prompts, sort order, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import ByteTokenizer, DataError, load_preference_dataset, read_preference_records


def write(tmp_path: Path, lines: list[str | dict] | bytes, name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


NATIVE = {"id": "a", "prompt": "p", "responses": ["r0", "r1", "r2"], "rewards": [0.1, 0.9, 0.5]}
NEMO = {
    "prompt": "p",
    "chosen_response": "c",
    "rejected_response": "r",
    "chosen_reward": 2,
    "rejected_reward": 1,
}
TRL = {"prompt": "p", "chosen": "c", "rejected": "r"}


def test_native_sorted_by_reward_best_first(tmp_path):
    records, fmt = read_preference_records(write(tmp_path, [NATIVE]), k=3)
    assert fmt == "native"
    (rec,) = records
    assert rec.responses == ["r1", "r2", "r0"]
    assert rec.rewards == [0.9, 0.5, 0.1]
    assert rec.response_fields == ["responses[1]", "responses[2]", "responses[0]"]
    assert (rec.id, rec.line, rec.prompt) == ("a", 1, "p")


def test_sort_is_stable_for_tied_rewards(tmp_path):
    rec = {"prompt": "p", "responses": ["a", "b", "c", "d"], "rewards": [0, 1, 0, 1]}
    (parsed,), _ = read_preference_records(write(tmp_path, [rec]), k=4)
    assert parsed.responses == ["b", "d", "a", "c"]


def test_native_without_rewards_keeps_file_order_when_rewards_are_optional(tmp_path):
    # SFT data (loss=sft, k=1): one demonstration per prompt, no rewards; a later record with rewards is an error.
    path = write(tmp_path, [{"prompt": "p", "responses": ["x"]}, {"prompt": "q", "responses": ["y"]}])
    records, fmt = read_preference_records(path, k=1, require_rewards=False)
    assert fmt == "native" and [(r.responses, r.rewards) for r in records] == [(["x"], None), (["y"], None)]
    with pytest.raises(DataError, match="rewards"):
        read_preference_records(path, k=1, require_rewards=True)
    mixed = write(
        tmp_path, [{"prompt": "p", "responses": ["x"]}, {"prompt": "q", "responses": ["y"], "rewards": [1]}]
    )
    with pytest.raises(DataError) as err:
        read_preference_records(mixed, k=1, require_rewards=False)
    assert (err.value.line, err.value.field) == (2, "rewards")


def test_nemo_aligner_keeps_chosen_first_even_when_its_reward_is_lower(tmp_path):
    low = {**NEMO, "chosen_reward": -1.5}
    records, fmt = read_preference_records(write(tmp_path, [NEMO, low]), k=2)
    assert fmt == "nemo_aligner"
    assert [r.responses for r in records] == [["c", "r"], ["c", "r"]]
    assert [r.rewards for r in records] == [[2.0, 1.0], [-1.5, 1.0]]


def test_trl_has_no_rewards_and_accepts_conversational_responses(tmp_path):
    conv = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    records, fmt = read_preference_records(write(tmp_path, [TRL, conv]), k=2)
    assert fmt == "trl"
    assert records[0].rewards is None and records[0].responses == ["c", "r"]
    assert records[1].responses == [{"role": "assistant", "content": c} for c in ("hello", "go away")]
    assert records[1].prompt == [{"role": "user", "content": "hi"}]


def test_format_is_detected_per_file(tmp_path):
    for rec, expected in ((NATIVE, "native"), (NEMO, "nemo_aligner"), (TRL, "trl")):
        k = 3 if expected == "native" else 2
        _, fmt = read_preference_records(write(tmp_path, [rec], name=f"{expected}.jsonl"), k=k)
        assert fmt == expected


def test_forced_format_is_used(tmp_path):
    # A record with both TRL and native keys: auto picks native, format=trl reads chosen/rejected.
    both = {**TRL, "responses": ["x", "y"], "rewards": [0, 1]}
    path = write(tmp_path, [both])
    assert read_preference_records(path, k=2)[0][0].responses == ["y", "x"]
    assert read_preference_records(path, k=2, fmt="trl")[0][0].responses == ["c", "r"]


def test_blank_lines_and_bom_are_skipped(tmp_path):
    path = write(
        tmp_path, b"\xef\xbb\xbf" + json.dumps(TRL).encode() + b"\n\n  \r\n" + json.dumps(TRL).encode()
    )
    records, _ = read_preference_records(path, k=2)
    assert [r.line for r in records] == [1, 4]


def _native(**fields) -> dict:
    return {"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0], **fields}


# (case id, file content, DataConfig/k/max_seq_len overrides, expected message after the path)
BAD_INPUTS = [
    ("json", [_native(), '{"prompt": "p",'], {},
     ":2: record: invalid JSON: Expecting property name enclosed in double quotes (column 16)"),
    ("not-object", ["[1, 2]"], {}, ":1: record: expected a JSON object, got array"),
    ("utf8", b'{"prompt": "\xff"}\n', {}, ":1: record: invalid UTF-8 at byte 13"),
    ("undetectable", [{"question": "q"}], {},
     ":1: record: cannot detect the format from keys ['question']; expected 'responses' (native), "
     "'chosen_response' (nemo_aligner) or 'chosen' (trl)"),
    ("prompt-missing", [{"responses": ["a", "b"], "rewards": [1, 0]}], {}, ":1: prompt: missing"),
    ("prompt-type", [_native(prompt=3)], {}, ":1: prompt: expected a string or a list of messages, got number"),
    ("prompt-empty", [_native(prompt="  ")], {}, ":1: prompt: empty"),
    ("prompt-no-messages", [_native(prompt=[])], {}, ":1: prompt: empty"),
    ("message-type", [_native(prompt=["hi"])], {}, ":1: prompt[0]: expected a {role, content} object, got string"),
    ("message-content", [_native(prompt=[{"role": "user"}])], {}, ":1: prompt[0].content: missing"),
    ("message-role", [_native(prompt=[{"role": 1, "content": "x"}])], {},
     ":1: prompt[0].role: expected a string, got number"),
    ("responses-missing", [{"prompt": "p", "responses": None, "rewards": [1, 0]}], {},
     ":1: responses: expected a list of 2 strings, got null"),
    ("responses-type", [_native(responses="ab")], {}, ":1: responses: expected a list of 2 strings, got string"),
    ("k-mismatch", [_native(), _native(responses=["a", "b", "c"])], {},
     ":2: responses: expected 2 responses (k=2), got 3"),
    ("response-type", [_native(responses=["a", 5])], {}, ":1: responses[1]: expected a string, got number"),
    ("response-empty", [_native(responses=["", "b"])], {}, ":1: responses[0]: empty"),
    ("rewards-missing", [{"prompt": "p", "responses": ["a", "b"]}], {},
     ":1: rewards: missing (rewards are never defaulted)"),
    ("rewards-length", [_native(rewards=[1])], {}, ":1: rewards: expected 2 rewards, one per response, got 1"),
    ("reward-string", [_native(rewards=["1.0", 0])], {}, ":1: rewards[0]: expected a number, got string"),
    ("reward-bool", [_native(rewards=[True, 0])], {}, ":1: rewards[0]: expected a number, got boolean"),
    ("reward-null", [_native(rewards=[None, 0])], {}, ":1: rewards[0]: expected a number, got null"),
    ("reward-nan", ['{"prompt": "p", "responses": ["a", "b"], "rewards": [NaN, 0]}'], {},
     ":1: rewards[0]: not finite (nan)"),
    ("reward-inf", ['{"prompt": "p", "responses": ["a", "b"], "rewards": [0, -Infinity]}'], {},
     ":1: rewards[1]: not finite (-inf)"),
    ("reward-overflow", ['{"prompt": "p", "responses": ["a", "b"], "rewards": [1e999, 0]}'], {},
     ":1: rewards[0]: not finite (inf)"),
    ("nemo-reward-missing", [{k: v for k, v in NEMO.items() if k != "rejected_reward"}], {},
     ":1: rejected_reward: missing (rewards are never defaulted)"),
    ("nemo-k", [NEMO], {"k": 4}, ":1: k: nemo_aligner records hold 2 responses, but k=4; set k=2"),
    ("trl-empty", [{**TRL, "rejected": ""}], {}, ":1: rejected: empty"),
    ("trl-role", [{**TRL, "chosen": [{"role": "user", "content": "c"}]}], {},
     ":1: chosen[0].role: expected 'assistant', got 'user'"),
    ("mixed-formats", [_native(), TRL], {}, ":2: responses: missing"),
    ("forced-format", [_native()], {"format": "trl"}, ":1: chosen: missing"),
    ("duplicate-id", [_native(id="a"), _native(id="b"), _native(id="a")], {},
     ":3: id: duplicate 'a' (first on line 1)"),
    ("id-type", [_native(id=[1])], {}, ":1: id: expected a string or an integer, got array"),
    ("empty-file", ["", "  "], {}, ": file: empty dataset (no records)"),
    ("too-long", [_native(), _native(responses=["a", "b" * 20])], {"truncation": "error", "max_seq_len": 16},
     ":2: responses[1]: prompt + response is 23 tokens, over model.max_seq_len=16 (data.truncation=error)"),
    ("all-dropped", [_native(responses=["a" * 20, "b"])], {"truncation": "drop", "max_seq_len": 16},
     ": data.truncation: all 1 examples were dropped: each has a prompt + response longer than "
     "model.max_seq_len=16"),
]  # fmt: skip


@pytest.mark.parametrize(
    "content, overrides, expected", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_names_file_line_and_field(tmp_path, content, overrides, expected):
    path = write(tmp_path, content)
    overrides = dict(overrides)
    k = overrides.pop("k", 2)
    max_seq_len = overrides.pop("max_seq_len", 64)
    with pytest.raises(DataError) as err:
        load_preference_dataset(path, DataConfig(**overrides), ByteTokenizer(), k=k, max_seq_len=max_seq_len)
    assert str(err.value) == f"{path}{expected}"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as err:
        read_preference_records(path, k=2)
    assert str(err.value) == f"{path}: file: not found"
    assert (err.value.path, err.value.line, err.value.field) == (str(path), None, "file")


def test_data_error_fields_and_pickling():
    import pickle

    err = DataError("x.jsonl", 3, "rewards[1]", "not finite (nan)")
    assert str(err) == "x.jsonl:3: rewards[1]: not finite (nan)"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.line, copy.field, copy.problem, str(copy)) == (
        "x.jsonl", 3, "rewards[1]", "not finite (nan)", str(err)
    )  # fmt: skip
