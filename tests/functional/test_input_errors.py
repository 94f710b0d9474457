"""Every bad input stops the CLI with one line ``error: <file>:<line>: <field>: <problem>`` and writes no checkpoint.

The cases run ``nemo_rpo.cli.train.main`` in this process (what ``python -m nemo_rpo.train`` calls;
``test_train_cli.py`` runs the same path as a subprocess once): each fails while the data is read,
before the model is built, so a subprocess would spend most of its time importing megatron.
"""

from __future__ import annotations

import json
import math

import pytest

from nemo_rpo.cli.train import main

pytestmark = pytest.mark.functional

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]
GOOD = {"prompt": "What is 2+2?", "responses": ["4", "four", "5", "22"], "rewards": [1.0, 0.9, 0.1, 0.0]}


def _line(**fields) -> str:
    return json.dumps({**GOOD, **fields}, allow_nan=True)


# name: (file lines (str) or raw bytes, extra overrides, expected error after "error: ", {file} = the data)
CASES = {
    "malformed_json": ([_line(), '{"prompt": "p", "responses": ['], [], "{file}:2: record: invalid JSON"),
    "not_an_object": (["[1, 2]"], [], "{file}:1: record: expected a JSON object, got array"),
    "missing_field": ([_line(), json.dumps({"prompt": "p", "responses": GOOD["responses"]})], [],
                      "{file}:2: rewards: missing (rewards are never defaulted)"),
    "mistyped_field": ([_line(rewards="high")], [], "{file}:1: rewards: expected a list of 4 numbers, got string"),
    "mistyped_response": ([_line(responses=["a", 2, "c", "d"])], [], "{file}:1: responses[1]: expected a string"),
    "k_differs": ([_line(), _line(responses=["a", "b"], rewards=[1, 0])], [],
                  "{file}:2: responses: expected 4 responses (k=4), got 2"),
    "k_differs_from_config": ([_line()], ["k=2", "loss=dpo"], "{file}:1: responses: expected 2 responses (k=2), got 4"),
    "nan_reward": (['{"prompt": "p", "responses": ["a", "b", "c", "d"], "rewards": [NaN, 1, 2, 3]}'], [],
                   "{file}:1: rewards[0]: not finite (nan)"),
    "inf_reward": ([_line(), _line(rewards=[1, float("inf"), 0, 0])], [], "{file}:2: rewards[1]: not finite (inf)"),
    "empty_prompt": ([_line(prompt="  ")], [], "{file}:1: prompt: empty"),
    "empty_response": ([_line(responses=["a", "b", "", "d"])], [], "{file}:1: responses[2]: empty"),
    "invalid_utf8": ((_line() + "\n").encode() + b'{"prompt": "\xff\xfe"}\n', [],
                     "{file}:2: record: invalid UTF-8 at byte 13"),
    "duplicate_id": ([_line(id="a"), _line(id="b"), _line(id="a")], [], "{file}:3: id: duplicate 'a' (first on line 1)"),
    "over_length_error": ([_line(), _line(responses=["x" * 300, "b", "c", "d"])], ["data.truncation=error"],
                          "{file}:2: responses[0]: prompt + response is"),
    "over_length_all_dropped": ([_line(responses=["x" * 300, "b", "c", "d"])], ["data.truncation=drop"],
                                "{file}: data.truncation: all 1 examples were dropped"),
    "empty_dataset": (["", "  "], [], "{file}: file: empty dataset (no records)"),
    "smaller_than_global_batch": ([_line(id=i) for i in range(5)], ["trainer.global_batch_size=8",
                                  "trainer.micro_batch_size=4"], "{file}: trainer.global_batch_size: 8 is more than the 5 examples "
                                  "in the dataset; set trainer.global_batch_size=4"),
    "smaller_than_one_micro_batch": ([_line(id=i) for i in range(2)], [],
                                     "{file}: trainer.global_batch_size: 32 is more than the 2 examples in the dataset; "
                                     "set trainer.global_batch_size=2 trainer.micro_batch_size=2"),
    "no_rewards_for_rpo": ([json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})], ["k=2", "loss=rpo_bwd"],
                           "{file}: rewards: trl data has no rewards; loss rpo_bwd needs them"),
    "kto_single_example": ([json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})],
                           ["loss=kto", "trainer.global_batch_size=1", "trainer.micro_batch_size=1"],
                           "{file}: records: loss kto pairs each example with another one's response"),
    "missing_file": (None, [], "{file}: file: not found"),
    "bad_config_value": ([_line()], ["trainer.max_steps=0"], "config: trainer.max_steps: must be >= 1"),
    "bad_config_cross_field": ([_line()], ["trainer.global_batch_size=6", "trainer.micro_batch_size=4"],
                               "config: trainer.global_batch_size: must be a multiple of micro_batch_size"),
    "unknown_config_key": ([_line()], ["trainer.max_stepz=3"], "config: "),
    "added_unknown_key": ([_line()], ["+foo=1"], "config: foo: unknown key, RPOConfig has no 'foo' ('+' cannot add "
                          "keys the schema lacks)"),
    "added_unknown_nested_key": ([_line()], ["+trainer.foo=1"], "config: trainer.foo: unknown key, TrainerConfig"),
    "missing_group_choice": ([_line()], ["loss=sq"], "config: In 'train': Could not find 'loss/sq'; choose one of "),
    "global_below_micro_batch": ([_line()], ["trainer.global_batch_size=2"], "config: trainer.global_batch_size: 2 "
                                 "is less than trainer.micro_batch_size=8; set trainer.micro_batch_size=2 too"),
    "online_empty_prompt": ([_line(), _line(prompt="")], ["mode=online", "online.sft_warmup_steps=0"],
                            "{file}:2: prompt: empty"),
    "online_fewer_prompts_than_global_batch": ([_line(id=i) for i in range(3)], ["mode=online",
                                               "online.sft_warmup_steps=0", "trainer.global_batch_size=8",
                                               "trainer.micro_batch_size=4"],
                                               "{file}: trainer.global_batch_size: 8 is more than the 3 examples"),
}  # fmt: skip


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    content, overrides, expected = CASES[case]
    data, exp = tmp_path / "data.jsonl", tmp_path / "run"
    if isinstance(content, bytes):
        data.write_bytes(content)
    elif content is not None:
        data.write_text("".join(line + "\n" for line in content))
    path_key = "data.prompts_path" if "mode=online" in overrides else "data.train_path"
    code, out, err = _main(capsys, f"exp_dir={exp}", f"{path_key}={data}", *overrides, *QUIET)

    assert code == 2, out[-2000:] + err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith("error: " + expected.format(file=data)), errors[0]
    assert "Traceback" not in err + out
    assert not exp.exists()  # not even config.yaml: it is written once every check has passed


def test_debug_shows_the_traceback(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(_line(prompt="") + "\n")
    from nemo_rpo.data.errors import DataError

    with pytest.raises(DataError, match="prompt: empty"):
        main([f"exp_dir={tmp_path / 'run'}", f"data.train_path={data}", "debug=true", *QUIET])


SMALL = ["trainer.global_batch_size=8", "trainer.micro_batch_size=4", "checkpoint.save_interval=2", *QUIET]


def _files(exp_dir) -> dict[str, tuple[bytes, int]]:
    """Every file under ``exp_dir``: its bytes and modification time."""
    return {
        str(p.relative_to(exp_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in exp_dir.rglob("*")
        if p.is_file()
    }


def test_checkpoint_of_another_model_shape_is_one_line(tmp_path, capsys):
    """The model config is compared with the checkpoint's before any tensor is read; exp_dir stays as it was."""
    exp = tmp_path / "run"
    assert _main(capsys, f"exp_dir={exp}", "trainer.max_steps=1", *SMALL)[0] == 0
    ref_cache = (exp / "reference_logps.pt").read_bytes()
    before = _files(exp)
    assert "hidden_size: 64" in before["config.yaml"][0].decode()
    code, out, err = _main(capsys, f"exp_dir={exp}", "trainer.max_steps=2", "model.hidden_size=128", *SMALL)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {exp / 'checkpoints' / 'step_00000001'}: model: checkpoint has hidden_size 64, "
                      "config has 128"]  # fmt: skip
    assert "Traceback" not in err
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert (exp / "reference_logps.pt").read_bytes() == ref_cache
    assert _files(exp) == before  # config.yaml included: not rewritten with the failed run's shape


def test_finished_run_is_complete_and_a_longer_one_keeps_or_recomputes_the_schedule(
    tmp_path, capsys, monkeypatch
):
    """Rerun: "run complete", exit 0, no model built. Longer: refused unless checkpoint.resume_schedule says how."""
    exp, data = tmp_path / "run", tmp_path / "data.jsonl"
    data.write_text("".join(_line(id=i) + "\n" for i in range(8)))
    args = [
        f"exp_dir={exp}",
        f"data.train_path={data}",
        "optim.warmup_steps=1",
        *SMALL,
    ]  # cosine to 0 at max_steps
    assert _main(capsys, *args, "trainer.max_steps=2")[0] == 0
    before = _files(exp)

    def no_model(*_a, **_k):
        raise AssertionError("the model was built")

    with monkeypatch.context() as patch:
        patch.setattr("nemo_rpo.algorithms.offline.build_policy", no_model)
        code, out, err = _main(capsys, *args, "trainer.max_steps=2")
    assert (code, err) == (0, ""), err
    ckpt = exp / "checkpoints" / "step_00000002"
    layout = "layout: world size 1 (single) = tp 1 x pp 1 x dp 1; global batch "
    assert out.splitlines()[0].startswith(layout), out
    assert out.splitlines()[1:] == [f"run complete: {ckpt} is at trainer.max_steps=2; nothing to do (a larger "
                                "trainer.max_steps trains on, checkpoint.resume=false starts over)"]  # fmt: skip

    code, out, err = _main(capsys, *args, "trainer.max_steps=4")
    assert code == 2
    assert err.splitlines() == [f"error: {ckpt}: schedule: this config's learning-rate schedule differs from the "
                                "checkpoint's for the steps left (decay steps (trainer.max_steps) 2 -> 4; lr of step 3 0.00e+00 -> "
                                "2.25e-03); set checkpoint.resume_schedule=checkpoint to keep the checkpoint's, or "
                                "checkpoint.resume_schedule=config to use this config's"]  # fmt: skip
    assert _files(exp) == before

    code, out, err = _main(capsys, *args, "trainer.max_steps=1")
    assert (code, err.splitlines()) == (2, [f"error: {ckpt}: step: the checkpoint is at step 2, past trainer."
                                            "max_steps=1; set trainer.max_steps=2 or more, or checkpoint.resume=false "
                                            "to start over"])  # fmt: skip

    # Megatron's use-checkpoint: the lr stays at the checkpoint's min_lr (0) after its last step.
    assert _main(capsys, *args, "trainer.max_steps=3", "checkpoint.resume_schedule=checkpoint")[0] == 0
    # Megatron's override: this config's schedule, as a fresh 5-step run would have it at steps 4-5.
    assert _main(capsys, *args, "trainer.max_steps=5", "checkpoint.resume_schedule=config")[0] == 0
    lrs = [json.loads(line)["lr"] for line in (exp / "metrics.jsonl").read_text().splitlines()]
    # step s applies the lr after s - 1 steps: warmup 1, then cosine over the 4 steps to 5
    cosine = [3e-3 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in (4, 5)]
    assert lrs[:3] == [0.0, 3e-3, 0.0] and lrs[3:] == pytest.approx(cosine)


def test_nan_steps_are_skipped_then_stop_the_run(tmp_path, capsys, nan_reference_at):
    """A NaN loss (the nan_reference_at fixture) skips the update and is counted; one too many stops
    before the next save."""
    exp = tmp_path / "run"
    nan_reference_at(2)
    assert _main(capsys, f"exp_dir={exp}", "trainer.max_steps=3", *SMALL)[0] == 0
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    assert rows[1]["loss"] is None and rows[1]["grad_norm"] is None
    assert rows[2]["loss"] is not None and rows[2]["grad_norm"] is not None

    exp = tmp_path / "stop"
    nan_reference_at(3, 4)
    code, out, err = _main(
        capsys, f"exp_dir={exp}", "trainer.max_steps=6", "trainer.max_skipped_steps=1", *SMALL
    )
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: trainer.max_skipped_steps: 2 steps had a non-finite loss or gradient norm (the "
                      "last at step 4), more than the limit of 1; stopped before saving a checkpoint"]  # fmt: skip
    assert "Traceback" not in err
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["latest", "step_00000002"]


@pytest.mark.parametrize("mode, report", [("truncate", "8 examples (0 dropped, 1 truncated"),
                                          ("drop", "8 examples (1 dropped, 0 truncated")])  # fmt: skip
def test_over_length_sequences_are_counted_and_reported(tmp_path, capsys, mode, report):
    data = tmp_path / "data.jsonl"
    long = _line(id="long", responses=["x" * 300, "b", "c", "d"])
    data.write_text(
        "".join(line + "\n" for line in [*(_line(id=i) for i in range(8 - (mode == "truncate"))), long])
    )
    code, out, err = _main(capsys, f"exp_dir={tmp_path / 'run'}", f"data.train_path={data}", f"data.truncation={mode}", "trainer.max_steps=1",
                           *SMALL)  # fmt: skip
    assert code == 0, err[-2000:]
    assert report in out
