"""``nemo-rpo-testbed``: the ground-truth-judge testbed (paper §4, §6) from ``conf/testbed.yaml``.

    nemo-rpo-testbed                                  # the full grid, 3 seeds, tiny GPT, CPU
    nemo-rpo-testbed quick=true exp_dir=runs/tb_quick # CI: 5 methods, 1 seed, a few minutes on 2 cores
    nemo-rpo-testbed 'full.methods=[dpo,rpo_bwd_k2]' 'full.seeds=[1,2]'

One process (no torchrun): the stages are small and run in sequence. Rerunning the same command skips
finished stages and runs. Errors exit with status 2 and one line ``error: ...``; ``debug=true`` (or
``NEMO_RPO_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys

CONFIG_NAME = "testbed"
SCHEMA_NAME = "testbed_schema"


def load_testbed_config(overrides: list[str]):
    """Compose ``conf/testbed.yaml`` with ``overrides`` and convert it to a ``TestbedConfig``."""
    from nemo_rpo.config.store import load_typed_config
    from nemo_rpo.config.testbed_schema import TestbedConfig

    return load_typed_config(overrides, CONFIG_NAME, SCHEMA_NAME, TestbedConfig)


def run(cfg) -> dict:
    from nemo_rpo.distributed.determinism import prepare_process

    prepare_process(cfg.deterministic)  # before any kernel runs and before megatron is imported
    from nemo_rpo.testbed.pipeline import run_testbed

    return run_testbed(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("NEMO_RPO_DEBUG") == "1" or any(a in ("debug=true", "debug=True") for a in argv)
    try:
        run(load_testbed_config(argv))
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line unless debugging
        if debug:
            raise
        from nemo_rpo.cli.train import _one_line

        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
