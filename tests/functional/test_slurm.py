"""``examples/slurm/offline_rpo_cpu.sbatch`` under a real Slurm whose node is this machine.

Two jobs started together on the node both complete (each on its own port: the script once forced
29500 on every job, and the second one died with EADDRINUSE); one runs the script as written (the
embedded default), the other on a bundled data file (``DATA=``). Then a job cancelled after a checkpoint
is resubmitted with the same command and resumes from its last complete checkpoint.

Needs a local Slurm (``bash .ci/slurm_up.sh`` starts one on Debian as root; ``.ci/run`` does). Skips
without one, unless ``NEMO_RPO_SLURM_TEST=require`` (set by ``.ci/run`` once Slurm is up), which makes a
missing Slurm a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "offline_rpo_cpu.sbatch"
DATA = Path(__file__).resolve().parents[2] / "examples" / "data" / "native_k4.jsonl"  # 2 prompts, K=4
SMALL = ["trainer.global_batch_size=2", "trainer.micro_batch_size=2", "logging.tensorboard=false"]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")
WAIT_S = 600  # per job; a loaded 2-core machine starts python with megatron in ~10-40 s


def _local_slurm_problem() -> str | None:
    """Why the test cannot run here, or ``None`` when this machine is a Slurm node with 2 idle CPUs."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no Slurm client on PATH (bash .ci/slurm_up.sh starts a one-node Slurm on Debian as root)"
    host = socket.gethostname().split(".")[0]
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-n", host, "-o", "%T %c"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if out.returncode != 0:
        return f"sinfo failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    fields = out.stdout.split()
    if len(fields) < 2:
        return f"this machine ({host}) is not a node of the Slurm cluster that sinfo reaches"
    if fields[0].rstrip("*") not in ("idle", "mixed") or int(fields[1]) < 2:
        return f"node {host} is {fields[0]} with {fields[1]} CPUs (needs idle with >= 2)"
    return None


@pytest.fixture(scope="module")
def slurm() -> list[str]:
    """Yields a list to append submitted job ids to; cancels any still alive at the end."""
    problem = _local_slurm_problem()
    if problem is not None:
        if os.environ.get("NEMO_RPO_SLURM_TEST") == "require":
            pytest.fail(f"NEMO_RPO_SLURM_TEST=require but no usable local Slurm: {problem}")
        pytest.skip(f"no local Slurm: {problem}")
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


def _job_env() -> dict[str, str]:
    """This environment without launcher variables (as from a login shell), and this interpreter."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "EXP_DIR", "DATA", "VENV")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    if "SLURM_CONF" in os.environ:
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    return {**env, "PYTHON": sys.executable}


def _submit(
    jobs: list[str], exp_dir: Path, *overrides: str, data: Path | None = None, hold: bool = False
) -> str:
    cmd = [
        "sbatch",
        "--parsable",
        "--cpus-per-task=1",
        f"--output={exp_dir}.log",
        f"--chdir={exp_dir.parent}",
    ]
    env = {**_job_env(), "EXP_DIR": str(exp_dir), **({"DATA": str(data)} if data else {})}
    proc = subprocess.run([*cmd, *(["--hold"] if hold else []), str(SCRIPT), *overrides], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    jobs.append(job)
    return job


def _job(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _wait(job: str, log: Path) -> dict[str, str]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        info = _job(job)
        if info.get("JobState") in DONE:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job], capture_output=True, timeout=30)
    tail = log.read_text()[-3000:] if log.exists() else "(no log)"
    pytest.fail(f"job {job} not done after {WAIT_S} s: {_job(job).get('JobState')}\n{tail}")


def _assert_completed(info: dict[str, str], log: Path) -> str:
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), text[-3000:]
    return text


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _log_until(job: str, log: Path, done: Callable[[str], bool]) -> str:
    """Wait until ``done(log text)`` while ``job`` runs; the text."""
    deadline = time.monotonic() + WAIT_S
    while not done(text := log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"job {job}: not there after {WAIT_S} s:\n{text[-3000:]}"
        assert _job(job).get("JobState") not in DONE, f"job {job} ended:\n{text[-3000:]}"
        time.sleep(0.2)
    return text


def test_two_jobs_share_a_node_then_a_resubmission_resumes(slurm, tmp_path):
    from nemo_rpo.training.checkpoint import find_latest_checkpoint

    # Two jobs released together start in one scheduling pass and train at the same time: the script as
    # written (embedded default) and one on a data file.
    exp = {name: tmp_path / name for name in ("embedded", "data")}
    jobs = {
        "embedded": _submit(slurm, exp["embedded"], "trainer.max_steps=3", hold=True),
        "data": _submit(slurm, exp["data"], "trainer.max_steps=3", *SMALL, data=DATA, hold=True),
    }
    subprocess.run(["scontrol", "release", ",".join(jobs.values())], check=True, timeout=30)
    infos = {name: _wait(job, Path(f"{exp[name]}.log")) for name, job in jobs.items()}
    for name, job in jobs.items():
        text = _assert_completed(infos[name], Path(f"{exp[name]}.log"))
        port = 20000 + int(job) % 20000
        assert f"layout: world size 1 (slurm job {job}, master " in text, text[-3000:]
        assert f":{port}) = tp 1 x pp 1 x dp 1; global batch " in text, text[-3000:]
        assert "step     3/3 | loss" in text, text[-3000:]
    assert f"data: {DATA} (native): 2 examples" in Path(f"{exp['data']}.log").read_text()
    starts = [_time(info["StartTime"]) for info in infos.values()]
    ends = [_time(info["EndTime"]) for info in infos.values()]
    assert max(starts) < min(ends), f"the jobs did not overlap: started {starts}, ended {ends}"

    # A job cancelled after a checkpoint (a preemption, a time limit), then the same command again. Both
    # would train for hours: the first is cancelled, the second once it has trained past the checkpoint.
    run, log = tmp_path / "resubmitted", Path(f"{tmp_path / 'resubmitted'}.log")
    args = ("trainer.max_steps=100000", "checkpoint.save_interval=2", *SMALL)
    first = _submit(slurm, run, *args, data=DATA)
    _log_until(first, log, lambda _: find_latest_checkpoint(run) is not None)
    subprocess.run(["scancel", first], check=True, timeout=30)
    assert _wait(first, log)["JobState"] == "CANCELLED", log.read_text()[-3000:]
    latest = find_latest_checkpoint(run)
    step = int(latest.name.removeprefix("step_"))

    second = _submit(slurm, run, *args, data=DATA)
    header = f"job {second} (restart 0)"  # the log is appended to: the second job's part starts here

    def trained_past(text: str) -> bool:
        return header in text and f"step {step + 2:>5}/100000 | loss" in text.split(header)[1]

    text = _log_until(second, log, trained_past).split(header)[1]
    subprocess.run(["scancel", second], check=True, timeout=30)
    assert f"resumed from {latest} at step {step}\n" in text, text[-3000:]
    resumed = text[text.index("resumed from") :]
    assert f"step {step + 1:>5}/100000 | loss" in resumed and f"step {step:>5}/" not in text, text[-3000:]
