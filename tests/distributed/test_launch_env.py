"""Launch-environment parsing (torchrun / Slurm / single process) and early configuration errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_rpo.config.schema import ConfigError, ParallelConfig
from nemo_rpo.distributed import launch

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
               "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_torchrun(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7",
                       "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}.items():  # fmt: skip
        clean_env.setenv(key, value)
    env = launch._read_launch_env()
    assert (env.source, env.rank, env.world_size, env.local_rank) == ("torchrun", 3, 4, 1)
    assert (env.master_addr, env.master_port) == ("node7", 1234)  # torchrun wins over Slurm


def test_slurm_master_from_scontrol(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("#!/bin/sh\nprintf 'gpu-a01\\ngpu-a02\\n'\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    clean_env.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
                       "SLURM_JOB_NODELIST": "gpu-a[01-02]", "MASTER_ADDR": "ignored"}.items():  # fmt: skip
        clean_env.setenv(key, value)
    env = launch._read_launch_env()
    assert (env.source, env.rank, env.world_size, env.local_rank) == ("slurm", 5, 8, 1)
    assert env.master_addr == "gpu-a01"
    assert env.master_port == 20000 + 4242  # the same on every task, derived from the job id


def test_slurm_without_scontrol_uses_master_addr(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("PATH", str(tmp_path))  # no scontrol here
    for key, value in {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-2]",
                       "MASTER_ADDR": "head", "MASTER_PORT": "2999"}.items():  # fmt: skip
        clean_env.setenv(key, value)
    env = launch._read_launch_env()
    assert (env.master_addr, env.master_port) == ("head", 2999)


def test_single_process_fallback(clean_env: pytest.MonkeyPatch) -> None:
    env = launch._read_launch_env()
    assert (env.source, env.rank, env.world_size, env.local_rank, env.master_addr) == (
        "single",
        0,
        1,
        0,
        "127.0.0.1",
    )
    assert 0 < env.master_port < 65536


def test_world_not_divisible_by_model_parallel_is_a_config_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"world size 3 is not divisible by tp\*pp = 2\*1 = 2"):
        launch.init_distributed(ParallelConfig(tp=2), seed=0)
    assert not torch.distributed.is_initialized()


def test_layout_line_slurm(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("PATH", str(tmp_path))  # no scontrol: MASTER_ADDR is the master
    for key, value in {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "812",
                       "MASTER_ADDR": "node01"}.items():  # fmt: skip
        clean_env.setenv(key, value)
    assert launch.describe_layout(ParallelConfig(tp=2), 8, 32) == (
        "layout: world size 4 (slurm job 812, master node01:20812) = tp 2 x pp 1 x dp 2; "
        "global batch 32 = micro batch 8 x dp 2 x 2 accumulation steps"
    )


def test_layout_line_single_and_indivisible(clean_env: pytest.MonkeyPatch) -> None:
    assert launch.describe_layout(ParallelConfig(), 2, 2) == (
        "layout: world size 1 (single) = tp 1 x pp 1 x dp 1; global batch 2 = micro batch 2 x dp 1 x 1 "
        "accumulation step"
    )
    for key, value in {"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "h", "MASTER_PORT": "7"}.items():
        clean_env.setenv(key, value)
    # init_distributed refuses this world size later; the line still says what was asked for
    assert launch.describe_layout(ParallelConfig(pp=2), 4, 12) == (
        "layout: world size 3 (torchrun, master h:7) = tp 1 x pp 2 x dp ?; global batch 12, micro batch 4"
    )


def test_layout_printed_on_rank_0_only(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for rank in ("1", "0"):
        for key, value in {"RANK": rank, "WORLD_SIZE": "2", "MASTER_PORT": "29400"}.items():
            clean_env.setenv(key, value)
        launch.print_layout(ParallelConfig(), 1, 4)
    assert capsys.readouterr().out == (
        "layout: world size 2 (torchrun, master 127.0.0.1:29400) = tp 1 x pp 1 x dp 2; "
        "global batch 4 = micro batch 1 x dp 2 x 2 accumulation steps\n"
    )


def test_set_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        assert launch.set_num_threads(1) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert launch.set_num_threads(None) == 2
        with pytest.raises(ConfigError, match="num_threads"):
            launch.set_num_threads(0)
    finally:
        torch.set_num_threads(before)


_FAULTS_SCRIPT = """
import resource, sys, torch
from nemo_rpo.distributed.launch import configure_cpu
configure_cpu(1, sys.argv[1] == "keep")
torch.ones(16 << 20).sum()  # the first round maps the pages in either mode
faults = []
for _ in range(8):  # 64 MiB allocated, written and freed per round
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20).sum()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)
"""


@pytest.mark.skipif(torch.cuda.is_available() or sys.platform != "linux", reason="glibc, CPU only")
def test_keep_freed_memory_stops_refaulting_large_blocks() -> None:
    """Without keep_freed_memory glibc unmaps a freed 64 MiB block and every round faults its 16k pages in
    again; with it the block stays in the heap and is reused. The heap may still grow once more after
    the first round (glibc's placement of small blocks varies from run to run), never every round."""
    faults = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             check=True, timeout=120)  # fmt: skip
        faults[mode] = [int(n) for n in out.stdout.split()[-8:]]
    assert all(n > 10_000 for n in faults["default"]), faults
    assert sum(n > 1_000 for n in faults["keep"]) <= 1, faults
