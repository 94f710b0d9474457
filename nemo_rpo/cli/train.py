"""``nemo-rpo-train``: compose the Hydra config, convert it to typed dataclasses, run the algorithm.

    nemo-rpo-train                                   # embedded default: offline rpo_bwd, K=4, tiny GPT, CPU
    nemo-rpo-train loss=dpo data.train_path=train.jsonl exp_dir=runs/dpo
    torchrun --nproc_per_node=4 -m nemo_rpo.train parallel.tp=2 parallel.pp=2
    nemo-rpo-train --multirun loss=rpo_bwd,rpo_sqloo hydra/launcher=submitit_slurm ...   # Hydra sweeps

Errors in the config, the data or a checkpoint, and a run stopped for too many non-finite steps
(``trainer.max_skipped_steps``), exit with status 2 and one line ``error: ...``; ``debug=true`` (or
``NEMO_RPO_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys


def _debug_requested(argv: list[str]) -> bool:
    return os.environ.get("NEMO_RPO_DEBUG") == "1" or any(a in ("debug=true", "debug=True") for a in argv)


def run(cfg) -> None:
    """Dispatch a typed config to its algorithm."""
    from nemo_rpo.distributed.determinism import prepare_process

    prepare_process(cfg.trainer.deterministic)  # before any kernel runs and before megatron is imported
    from nemo_rpo.distributed.launch import print_layout, teardown_distributed

    print_layout(cfg.parallel, cfg.trainer.micro_batch_size, cfg.trainer.global_batch_size)
    if cfg.mode == "online":
        from nemo_rpo.algorithms.online import train_online as train
    else:
        from nemo_rpo.algorithms.offline import train_offline as train
    try:
        train(cfg)
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-m", "--multirun") or a.startswith("--") for a in argv):
        return _hydra_main()
    debug = _debug_requested(argv)
    try:
        from nemo_rpo.cli.hf_defaults import apply_init_from_hf
        from nemo_rpo.config.store import compose_config, to_typed

        dict_cfg = compose_config(argv)
        apply_init_from_hf(dict_cfg, argv)
        run(to_typed(dict_cfg))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless debugging
        if debug:
            raise
        # Config and data errors are the same on every rank: say them once.
        rank = os.environ.get("RANK", "0")
        if rank == "0" or not _is_input_error(exc):
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)


def _is_input_error(exc: BaseException) -> bool:
    """Errors every rank raises alike (so rank 0 alone reports them)."""
    return _is_located(exc) or type(exc).__module__.startswith(("hydra", "omegaconf", "nemo_rpo.config"))


def _is_located(exc: BaseException) -> bool:
    """Errors whose message already says where and what: printed as they are."""
    from nemo_rpo.data.errors import DataError

    if isinstance(exc, DataError):
        return True
    if "nemo_rpo.training.step" in sys.modules:  # imported only once training has started
        from nemo_rpo.training.step import NonFiniteStepsError

        return isinstance(exc, NonFiniteStepsError)
    return False


def _one_line(exc: BaseException) -> str:
    from nemo_rpo.config.store import describe_error

    if _is_located(exc):
        return str(exc)
    module = type(exc).__module__
    if module.startswith(("hydra", "omegaconf")) or type(exc).__name__ == "ConfigError":
        return describe_error(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''} (rerun with debug=true for the traceback)"


def _hydra_main() -> None:
    """Hydra's own entry point, for --multirun sweeps, launcher plugins and --cfg/--help."""
    import hydra

    from nemo_rpo.config.store import conf_dir, register_schema, to_typed

    register_schema()

    @hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
    def _main(dict_cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        from nemo_rpo.cli.hf_defaults import apply_init_from_hf

        apply_init_from_hf(dict_cfg, HydraConfig.get().overrides.task)
        run(to_typed(dict_cfg))

    _main()


if __name__ == "__main__":
    main()
