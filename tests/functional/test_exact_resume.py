"""A run SIGKILLed at any moment and restarted with the same command repeats the uninterrupted run bitwise.

The interrupted run is killed twice: once from outside at a moment picked by polling metrics.jsonl
(wherever the process happens to be: mid-step, mid-log or mid-save), once by the test-only launcher
``_faulty_train.py --kill-at-save <step>`` (a checkpoint callback) after the temporary checkpoint
directory is written and before it is renamed. Every logged step must then equal the uninterrupted
run's with ``==`` (CPU is deterministic).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

HERE = Path(__file__).resolve().parent
SMALL = ["trainer.global_batch_size=8", "trainer.micro_batch_size=4", "checkpoint.save_interval=2",
         "optim.decay_style=constant", "optim.warmup_steps=0", "logging.progress_bar=false"]  # fmt: skip
TOY = ["mode=online", "reward.judge=toy_judges:vowel_fraction", "online.sft_warmup_steps=0",
       "generation.max_new_tokens=8"]  # fmt: skip


def _command(exp_dir: Path, args: list[str], kill_at_save: int | None = None) -> list[str]:
    """``python -m nemo_rpo.train``, or the test launcher that dies while saving step ``kill_at_save``."""
    entry = ["-m", "nemo_rpo.train"]
    if kill_at_save is not None:
        entry = [str(HERE / "_faulty_train.py"), "--kill-at-save", str(kill_at_save)]
    return [sys.executable, *entry, f"exp_dir={exp_dir}", *args]


def _env() -> dict[str, str]:
    path = f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # the toy judge
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": path}


def _run(exp_dir: Path, args: list[str], kill_at_save: int | None = None) -> subprocess.CompletedProcess:
    """Run to the end in its own process group; whatever it leaves behind is then killed with it (see below)."""
    out, err = exp_dir.parent / f"{exp_dir.name}.out", exp_dir.parent / f"{exp_dir.name}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(_command(exp_dir, args, kill_at_save), stdout=stdout, stderr=stderr, text=True,
                                env=_env(), process_group=0)  # fmt: skip
    try:
        proc.wait(timeout=600)
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(), err.read_text())


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group, as a scheduler kills a job.

    Killing the group also ends any child the run had at that moment (megatron's checkpoint writer
    forks one process per file while saving), so none is left holding the run's output open.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _logged_steps(exp_dir: Path) -> list[int]:
    path = exp_dir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line being written right now
            pass
    return steps


def _kill_after_step(exp_dir: Path, args: list[str], step: int) -> None:
    """Start a run and SIGKILL it as soon as metrics.jsonl shows ``step`` (wherever it then is)."""
    log = exp_dir.parent / f"{exp_dir.name}_killed_at_{step}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_command(exp_dir, args), stdout=out, stderr=out, env=_env(), process_group=0)
    deadline = time.monotonic() + 600
    while step not in _logged_steps(exp_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_group(proc)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
    )


def _metrics(exp_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_identical(got: list[dict], want: list[dict], keys: tuple[str, ...]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in keys:
            assert g[key] == w[key], (key, g, w)


def _tensorboard_losses(exp_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(exp_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def test_offline_sigkill_anywhere_resumes_bitwise(tmp_path):
    args = [*SMALL, "trainer.max_steps=8"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(full, args).returncode == 0

    _kill_after_step(cut, args, 3)  # checkpoint 2 is the newest complete one (or 4, if saved by then)
    proc = _run(cut, args, kill_at_save=6)
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert (cut / "checkpoints" / ".tmp_step_00000006" / "COMPLETE").is_file()  # written, never renamed
    assert (cut / "checkpoints" / "latest").read_text().strip() == "step_00000004"

    proc = _run(cut, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {cut / 'checkpoints' / 'step_00000004'} at step 4" in proc.stdout
    assert not (cut / "checkpoints" / ".tmp_step_00000006").exists()
    rows = _metrics(cut)
    _assert_identical(rows, _metrics(full), ("loss", "grad_norm", "accuracy", "lr", "skipped_steps"))
    assert _tensorboard_losses(cut).keys() == set(range(1, 9))  # the killed runs' steps were purged
    assert _tensorboard_losses(cut) == _tensorboard_losses(full)


def test_online_sigkill_resumes_bitwise(tmp_path):
    args = [*TOY, *SMALL, "trainer.max_steps=5", "logging.tensorboard=false"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(full, args).returncode == 0
    _kill_after_step(cut, args, 3)
    proc = _run(cut, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    _assert_identical(_metrics(cut), _metrics(full), ("loss", "grad_norm", "reward", "kl", "response_length"))


def test_iterative_offline_sigkill_mid_iteration_resumes_bitwise(tmp_path):
    """Alg. 3 with 2 iterations of 3 steps: killed inside iteration 2, after its data was regenerated."""
    args = [*SMALL, "trainer.max_steps=6", "schedule.iterations=2", "generation.max_new_tokens=8",
            "logging.tensorboard=false"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(full, args).returncode == 0
    _kill_after_step(cut, args, 5)
    assert (cut / "iterations" / "iter_1" / "data.jsonl").is_file()
    proc = _run(cut, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    assert (cut / "iterations" / "iter_1" / "data.jsonl").read_bytes() == (
        full / "iterations" / "iter_1" / "data.jsonl"
    ).read_bytes()  # the same regenerated data, not a second draw
    rows = _metrics(cut)
    assert [r["iteration"] for r in rows] == [0, 0, 0, 1, 1, 1]
    _assert_identical(rows, _metrics(full), ("loss", "grad_norm", "accuracy", "lr"))
