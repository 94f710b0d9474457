"""``nemo-rpo-train-rm``: train a Megatron reward model (Bradley-Terry or regression) from ``conf/train_rm.yaml``.

    nemo-rpo-train-rm                                     # embedded default: Bradley-Terry, K=4 synthetic, tiny GPT, CPU
    nemo-rpo-train-rm objective=regression data.train_path=prefs.jsonl exp_dir=runs/rm
    torchrun --nproc_per_node=2 -m nemo_rpo.cli.train_rm parallel.tp=2

Rerunning the same command resumes from the latest checkpoint in ``exp_dir``. Errors in the config or
the data exit with status 2 and one line ``error: ...``; ``debug=true`` (or ``NEMO_RPO_DEBUG=1``) shows
the full traceback instead.
"""

from __future__ import annotations

import os
import sys

CONFIG_NAME = "train_rm"
SCHEMA_NAME = "rm_schema"


def load_rm_config(overrides: list[str]):
    """Compose ``conf/train_rm.yaml`` with ``overrides`` and convert it to an ``RMTrainConfig``."""
    from nemo_rpo.config.rm_schema import RMTrainConfig
    from nemo_rpo.config.store import load_typed_config

    return load_typed_config(overrides, CONFIG_NAME, SCHEMA_NAME, RMTrainConfig)


def run(cfg) -> None:
    """Train the reward model described by a typed ``RMTrainConfig``."""
    from nemo_rpo.distributed.determinism import prepare_process

    prepare_process(cfg.trainer.deterministic)  # before any kernel runs and before megatron is imported
    from nemo_rpo.algorithms.reward_model import train_reward_model
    from nemo_rpo.distributed.launch import print_layout, teardown_distributed

    print_layout(cfg.parallel, cfg.trainer.micro_batch_size, cfg.trainer.global_batch_size)
    try:
        train_reward_model(cfg)
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("NEMO_RPO_DEBUG") == "1" or any(a in ("debug=true", "debug=True") for a in argv)
    try:
        run(load_rm_config(argv))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless debugging
        if debug:
            raise
        from nemo_rpo.data.errors import DataError

        input_error = isinstance(exc, DataError) or type(exc).__module__.startswith(
            ("hydra", "omegaconf", "nemo_rpo.config")
        )
        if os.environ.get("RANK", "0") == "0" or not input_error:  # input errors are the same on every rank
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)


def _one_line(exc: BaseException) -> str:
    from nemo_rpo.config.store import describe_error
    from nemo_rpo.data.errors import DataError

    if isinstance(exc, DataError):
        return str(exc)
    if type(exc).__module__.startswith(("hydra", "omegaconf")) or type(exc).__name__ == "ConfigError":
        return describe_error(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''} (rerun with debug=true for the traceback)"


if __name__ == "__main__":
    main()
