"""Process-group setup from the launch environment: torchrun, Slurm, or a single process.

``init_distributed`` reads who-am-I from the environment, starts ``torch.distributed`` (gloo on CPU,
nccl on GPU), builds megatron's tensor/pipeline/data-parallel groups and seeds every generator, so the
rest of the package only ever sees a :class:`ParallelInfo`.

Launch examples::

    python -m nemo_rpo.cli.train ...                          # one process, any free localhost port
    torchrun --nproc_per_node=4 -m nemo_rpo.cli.train ...     # RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*
    srun --ntasks=8 python -m nemo_rpo.cli.train ...          # SLURM_PROCID/NTASKS/LOCALID
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import shutil
import socket
import subprocess
from dataclasses import dataclass

import numpy as np
import torch

from nemo_rpo.config.schema import ConfigError, ParallelConfig
from nemo_rpo.distributed.cpu_support import (
    filter_noisy_warnings,
    fix_openmp_team_size,
    install_cpu_support,
    tune_glibc_malloc,
    warm_mkl_vml,
)

__all__ = ["ParallelInfo", "configure_cpu", "describe_layout", "init_distributed", "print_layout", "set_num_threads",
           "teardown_distributed"]  # fmt: skip

logger = logging.getLogger(__name__)

# gloo collectives on an oversubscribed 2-core machine can be slow; keep a generous but finite limit.
_PG_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class ParallelInfo:
    """Where this process sits in the world and in megatron's TP x PP x DP grid."""

    rank: int
    world_size: int
    local_rank: int
    dp_rank: int
    dp_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    is_first_pp: bool
    is_last_pp: bool
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Global rank 0: the process that writes logs and non-sharded files."""
        return self.rank == 0


@dataclass(frozen=True)
class _LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | single


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _slurm_master_addr(default: str) -> str:
    """First host of ``SLURM_JOB_NODELIST`` (``scontrol`` expands ``node[01-04]``), else ``default``."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist or shutil.which("scontrol") is None:
        return default
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return default
    hosts = out.split()
    return hosts[0] if hosts else default


def _read_launch_env() -> _LaunchEnv:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return _LaunchEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        # Every task must agree on the port without talking to each other: derive it from the job id.
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        return _LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            master_addr=_slurm_master_addr(env.get("MASTER_ADDR", "127.0.0.1")),
            master_port=int(env.get("MASTER_PORT", str(20000 + job_id % 20000))),
            source="slurm",
        )
    return _LaunchEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=_free_port(),
                      source="single")  # fmt: skip


def describe_layout(parallel: ParallelConfig, micro_batch_size: int, global_batch_size: int) -> str:
    """The run's layout in one line, from the launch environment that :func:`init_distributed` reads.

    Example: ``layout: world size 4 (slurm job 812, master node01:20812) = tp 2 x pp 1 x dp 2;
    global batch 32 = micro batch 8 x dp 2 x 2 accumulation steps``.
    """
    return _layout_line(_read_launch_env(), parallel, micro_batch_size, global_batch_size)


def print_layout(parallel: ParallelConfig, micro_batch_size: int, global_batch_size: int) -> None:
    """Print :func:`describe_layout` on global rank 0, first thing in a run's log, so that a job log says
    how the job was laid out whatever happens next."""
    launch = _read_launch_env()
    if launch.rank == 0:
        print(_layout_line(launch, parallel, micro_batch_size, global_batch_size), flush=True)


def _layout_line(
    launch: _LaunchEnv, parallel: ParallelConfig, micro_batch_size: int, global_batch_size: int
) -> str:
    model_parallel = parallel.tp * parallel.pp
    dp = launch.world_size // model_parallel if launch.world_size % model_parallel == 0 else None
    where = launch.source
    if launch.source == "slurm":
        where += f" job {os.environ.get('SLURM_JOB_ID', '?')}"
    if launch.source != "single":  # a single process picks its own free port
        where += f", master {launch.master_addr}:{launch.master_port}"
    line = f"layout: world size {launch.world_size} ({where}) = tp {parallel.tp} x pp {parallel.pp}"
    line += f" x dp {dp or '?'}"
    if dp is not None and global_batch_size % (micro_batch_size * dp) == 0:
        steps = global_batch_size // (micro_batch_size * dp)
        return line + (f"; global batch {global_batch_size} = micro batch {micro_batch_size} x dp {dp} x {steps} "
                       f"accumulation step{'s' if steps > 1 else ''}")  # fmt: skip
    return line + f"; global batch {global_batch_size}, micro batch {micro_batch_size}"


def set_num_threads(n: int | None) -> int:
    """Set torch's intra-op CPU threads; ``None`` keeps an explicit ``OMP_NUM_THREADS`` or torch's default.

    torchrun exports ``OMP_NUM_THREADS=1`` whenever it starts more than one process, so an explicit
    ``trainer.num_threads`` is the way to give each rank more than one core.

    Returns:
        The number of threads torch will use.
    """
    if n is not None:
        if n < 1:
            raise ConfigError(f"trainer.num_threads: must be >= 1, got {n}")
        torch.set_num_threads(n)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    return torch.get_num_threads()


def configure_cpu(num_threads: int | None, keep_freed_memory: bool, deterministic: bool = False) -> int:
    """Process-wide CPU settings, applied before the first large allocation: intra-op threads
    (:func:`set_num_threads`) and, without a GPU and when ``keep_freed_memory``, glibc keeping freed
    memory (:func:`~nemo_rpo.distributed.cpu_support.tune_glibc_malloc`; irreversible for the process).
    ``deterministic`` (``trainer.deterministic``): CPU-independent kernels and a fixed thread count
    (:func:`~nemo_rpo.distributed.determinism.apply_deterministic`), stated in one line on rank 0.
    OpenMP's dynamic team sizing is always turned off (:func:`~nemo_rpo.distributed.cpu_support.
    fix_openmp_team_size`), with one line on rank 0 when it was on, and MKL's vector math functions are
    first called on one thread (:func:`~nemo_rpo.distributed.cpu_support.warm_mkl_vml`).

    Returns:
        The number of threads torch will use.
    """
    if deterministic:
        from nemo_rpo.distributed.determinism import apply_deterministic, cpu_numerics

        threads = apply_deterministic(num_threads)
        if _read_launch_env().rank == 0:
            n = cpu_numerics()
            print(f"deterministic: ATen {n['aten_capability']} kernels, MKL {n['mkl_cbwr']} branch, no oneDNN, "
                  f"{threads} thread{'s' if threads > 1 else ''} on {n['cpu']} (the same numbers on any x86-64 CPU "
                  "for this thread count and layout)",
                  flush=True)  # fmt: skip
    else:
        threads = set_num_threads(num_threads)
    if fix_openmp_team_size() and _read_launch_env().rank == 0:
        print("OpenMP dynamic threads (OMP_DYNAMIC) were on: the team size followed the machine's load "
              f"average, and with it the numbers; turned off, {threads} thread{'s' if threads > 1 else ''}",
              flush=True)  # fmt: skip
    # MKL's vector math functions initialised on one thread, before any op could race to do it
    warm_mkl_vml()
    if keep_freed_memory and not torch.cuda.is_available():
        if not tune_glibc_malloc():
            logger.info("keep_freed_memory: not applied (no glibc, or a preloaded allocator)")
    return threads


def _seed_everything(seed: int, pp_rank: int) -> None:
    from megatron.core import tensor_parallel

    # Offset by pipeline stage, as Megatron-LM does, so stages do not draw identical initial weights;
    # TP and DP ranks share the seed (megatron's tracker derives the TP-region stream itself).
    stage_seed = seed + 100 * pp_rank
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    # On a CPU build torch.cuda.manual_seed (used inside megatron) is a silent no-op.
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


def init_distributed(parallel: ParallelConfig, seed: int) -> ParallelInfo:
    """Start torch.distributed and megatron's model-parallel groups, then seed all generators.

    Safe to call again in the same process (tests switch layouts): an existing process group is kept
    and megatron's groups are rebuilt for the new ``parallel`` layout.

    Args:
        parallel: tensor/pipeline sizes; data parallelism is ``world_size // (tp * pp)``.
        seed: base seed; python, numpy, torch and megatron's RNG tracker are seeded from it.

    Raises:
        ConfigError: when the world size is not a multiple of ``tp * pp``.
    """
    from megatron.core import parallel_state

    filter_noisy_warnings()
    launch = _read_launch_env()
    model_parallel = parallel.tp * parallel.pp
    if launch.world_size % model_parallel != 0:
        raise ConfigError(
            f"parallel: world size {launch.world_size} is not divisible by tp*pp = "
            f"{parallel.tp}*{parallel.pp} = {model_parallel}"
        )

    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    else:
        install_cpu_support()
        warm_mkl_vml()  # no-op after configure_cpu; for the Python API, which does not call it
        device = torch.device("cpu")

    if not torch.distributed.is_initialized():
        os.environ["MASTER_ADDR"] = launch.master_addr
        os.environ["MASTER_PORT"] = str(launch.master_port)
        torch.distributed.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=_PG_TIMEOUT,
        )
        logger.info("torch.distributed up (%s): rank %d of %d", launch.source, launch.rank, launch.world_size)

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
        _destroy_subgroups()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp, pipeline_model_parallel_size=parallel.pp
    )
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    _seed_everything(seed, pp_rank)

    return ParallelInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=launch.local_rank,
        dp_rank=parallel_state.get_data_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        pp_rank=pp_rank,
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        is_first_pp=parallel_state.is_pipeline_first_stage(),
        is_last_pp=parallel_state.is_pipeline_last_stage(),
        device=device,
    )


def _destroy_subgroups() -> None:
    """Destroy every process group but the default one.

    megatron's ``destroy_model_parallel`` forgets most of its groups without destroying them; each gloo
    group keeps two threads alive, so rebuilding the groups in one process (the testbed's in-process
    stages, test modules) used to leak thousands of threads and slow the whole machine down.
    """
    from torch.distributed import distributed_c10d as c10d

    for group in list(c10d._world.pg_map):
        if group is not c10d.GroupMember.WORLD:
            torch.distributed.destroy_process_group(group)


def teardown_distributed() -> None:
    """Destroy megatron's groups and the default process group (no-op when nothing is up)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
