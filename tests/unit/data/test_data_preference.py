"""Tokenization, explicit truncation with its counts, the rewards flag, and KTO's KL pairs."""

from __future__ import annotations

import json

import pytest

from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import (
    ByteTokenizer,
    DataError,
    PreferenceExample,
    PreferenceRecord,
    add_kl_pairs,
    load_preference_dataset,
    tokenize_records,
)

BOS, EOS = 257, 258


def rec(prompt, responses, rewards=None, line=1) -> PreferenceRecord:
    fields = [f"responses[{i}]" for i in range(len(responses))]
    return PreferenceRecord(line, prompt, list(responses), rewards, fields)


def build(records, *, max_prompt_len=96, max_seq_len=64, truncation="truncate"):
    return tokenize_records(
        records,
        ByteTokenizer(),
        max_prompt_len=max_prompt_len,
        max_seq_len=max_seq_len,
        truncation=truncation,
        path="d.jsonl",
    )


def test_layout_bos_prompt_then_responses_with_eos():
    (ex,), stats = build([rec("ab", ["xyz", "q"], [1.0, 0.0])])
    assert ex == PreferenceExample(0, [BOS, 97, 98], [[120, 121, 122, EOS], [113, EOS]], [1.0, 0.0])
    assert (stats.num_examples, stats.max_prompt_tokens, stats.max_seq_tokens, stats.mean_seq_tokens) == (
        1,
        3,
        7,
        6.0,
    )


def test_truncate_cuts_the_response_from_the_right():
    examples, stats = build([rec("ab", ["abcdefgh", "a"]), rec("c", ["d", "e"])], max_seq_len=8)
    assert examples[0].response_ids == [[97, 98, 99, 100, 101], [97, EOS]]
    assert (stats.num_truncated, stats.num_dropped, stats.num_examples, stats.max_seq_tokens) == (1, 0, 2, 8)


def test_drop_removes_the_example_and_reindexes():
    examples, stats = build(
        [rec("ab", ["abcdefgh", "a"]), rec("c", ["d", "e"])], max_seq_len=8, truncation="drop"
    )
    assert [ex.index for ex in examples] == [0]
    assert examples[0].prompt_ids == [BOS, 99]
    assert (stats.num_records, stats.num_examples, stats.num_dropped, stats.num_truncated) == (2, 1, 1, 0)


def test_error_names_the_response_as_written_in_the_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p", "responses": ["long" * 9, "ok"], "rewards": [0, 1]}) + "\n")
    with pytest.raises(DataError) as err:
        load_preference_dataset(path, DataConfig(truncation="error"), ByteTokenizer(), k=2, max_seq_len=16)
    # Sorting moved the long response to position 1; the message still names responses[0].
    assert str(err.value) == (
        f"{path}:1: responses[0]: prompt + response is 39 tokens, over model.max_seq_len=16 (data.truncation=error)"
    )


def test_long_prompt_is_cut_from_the_left_keeping_bos():
    (ex,), stats = build([rec("abcdefg", ["x", "y"])], max_prompt_len=4)
    assert ex.prompt_ids == [BOS, 101, 102, 103]
    assert (stats.num_prompts_truncated, stats.num_truncated) == (1, 0)


def test_prompt_always_leaves_room_for_one_response_token():
    (ex,), stats = build([rec("abcdef", ["xy", "z"])], max_seq_len=4)
    assert ex.prompt_ids == [BOS, 101, 102]
    assert ex.response_ids == [[120], [122]]
    assert (stats.num_prompts_truncated, stats.num_truncated, stats.max_seq_tokens) == (1, 1, 4)


def test_chat_prompt_uses_the_chat_template(tmp_path):
    path = tmp_path / "chat.jsonl"
    record = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "yo", "rejected": "no"}
    path.write_text(json.dumps(record) + "\n")
    ds = load_preference_dataset(path, DataConfig(), ByteTokenizer(), k=2, max_seq_len=64)
    assert ds.examples[0].prompt_ids == [BOS, *b"<|user|>\nhi\n<|assistant|>\n"]
    assert ds.format == "trl" and len(ds) == 1 and ds[0] is ds.examples[0]


def test_rewards_flag_and_require_rewards(tmp_path):
    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    ds = load_preference_dataset(trl, DataConfig(), ByteTokenizer(), k=2, max_seq_len=64)
    assert not ds.has_rewards and ds.examples[0].rewards is None
    with pytest.raises(DataError) as err:
        ds.require_rewards("rpo_bwd")
    assert str(err.value) == (
        f"{trl}: rewards: trl data has no rewards; loss rpo_bwd needs them (use the native or nemo_aligner format)"
    )
    native = tmp_path / "native.jsonl"
    native.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "rewards": [0, 1]}) + "\n")
    ds = load_preference_dataset(native, DataConfig(), ByteTokenizer(), k=2, max_seq_len=64)
    assert ds.has_rewards
    ds.require_rewards("rpo_bwd")


def test_stats_summary_reads_well():
    _, stats = build([rec("ab", ["xyz", "q"])])
    assert stats.summary() == (
        "1 examples (0 dropped, 0 truncated, 0 prompts cut); tokens: prompt max 3 mean 3.0, sequence max 7 mean 6.0"
    )


def test_kl_pairs_take_response_0_of_the_next_example():
    examples, _ = build([rec("a", ["b", "c"]), rec("d", ["e", "f"]), rec("g", ["hh", "i"])])
    paired = add_kl_pairs(examples)
    assert [ex.kl_response_ids for ex in paired] == [[101, EOS], [104, 104, EOS], [98, EOS]]
    assert all(ex.kl_response_ids is None for ex in examples)  # inputs untouched
    assert [ex.response_ids for ex in paired] == [ex.response_ids for ex in examples]


def test_kl_pairs_fit_max_seq_len():
    examples, _ = build([rec("a", ["b", "c"]), rec("d", ["eeee", "f"])])
    paired = add_kl_pairs(examples, max_seq_len=4)
    assert paired[0].kl_response_ids == [101, 101]  # [bos, 'a'] + 2 tokens


def test_kl_pairs_need_two_examples():
    examples, _ = build([rec("a", ["b", "c"])])
    with pytest.raises(ValueError, match="at least 2"):
        add_kl_pairs(examples)
