"""``nemo-rpo-convert``: Hugging Face Llama/Mistral/Qwen2 checkpoints <-> Megatron distributed checkpoints.

    nemo-rpo-convert hf-to-mcore --hf DIR --out CKPT [--tp N --pp M] [--precision fp32|bf16|fp16]
    nemo-rpo-convert mcore-to-hf --ckpt CKPT --out DIR [--hf-base DIR] [--dtype auto|fp32|bf16|fp16]
                                 [--peft-out DIR]

``hf-to-mcore`` writes a run directory: ``CKPT/config.yaml`` (the model shape and the HF tokenizer) and
``CKPT/checkpoints/step_00000000`` (torch_dist, weights only). With ``--tp/--pp`` it starts ``tp*pp``
CPU processes (gloo) and every rank writes its own shard, as a training job would; the checkpoint
loads into any layout (``checkpoint.init_from=CKPT``). Under ``torchrun`` it uses the launched ranks.

``mcore-to-hf`` takes a run directory (``nemo-rpo-train`` or ``hf-to-mcore`` output; the latest
checkpoint) or one checkpoint directory inside it, loads it at TP=1/PP=1 in one process, and writes
``model.safetensors``, ``config.json`` and the tokenizer files. The HF ``config.json`` starts from
``--hf-base`` or the run's ``model.init_from_hf`` directory (architecture, special tokens, ...), with
the shape from the run. ``--dtype auto`` keeps that config's dtype (else the run's precision). A LoRA run
(``model.lora.rank > 0``) is exported with its adapters merged into the base weights its checkpoint points
to; ``--peft-out DIR`` also writes them as a PEFT adapter directory (and, unless the base is a Hugging Face
directory already, the base model under ``DIR/base``): docs/lora.md.

Errors (missing files, unsupported architectures, shape mismatches) exit 2 with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-rpo-convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("hf-to-mcore", help="Hugging Face directory -> Megatron distributed checkpoint")
    imp.add_argument("--hf", required=True, help="HF model directory (safetensors/.bin/.gguf)")
    imp.add_argument("--out", required=True, help="output run directory")
    imp.add_argument("--tp", type=int, default=1)
    imp.add_argument("--pp", type=int, default=1)
    imp.add_argument("--precision", choices=sorted(_DTYPES), default="fp32")
    exp = sub.add_parser("mcore-to-hf", help="Megatron checkpoint -> Hugging Face directory")
    exp.add_argument("--ckpt", required=True, help="a run directory or one checkpoint directory")
    exp.add_argument("--out", required=True, help="output HF directory")
    exp.add_argument("--hf-base", default=None, help="HF directory for config.json defaults and tokenizer")
    exp.add_argument("--dtype", choices=["auto", *sorted(_DTYPES)], default="auto")
    exp.add_argument("--peft-out", default=None,
                     help="LoRA runs: also write the adapters as a PEFT adapter directory here")  # fmt: skip
    return parser


# --------------------------------------------------------------------------------------------------
# hf-to-mcore
# --------------------------------------------------------------------------------------------------


def _import_config(args):
    from nemo_rpo.cli.hf_defaults import apply_init_from_hf
    from nemo_rpo.config.store import compose_config, to_typed

    overrides = [f"model.init_from_hf={Path(args.hf).resolve()}", f"parallel.tp={args.tp}",
                 f"parallel.pp={args.pp}", f"model.precision={args.precision}", f"exp_dir={args.out}"]  # fmt: skip
    dict_cfg = compose_config(overrides)
    apply_init_from_hf(dict_cfg, overrides)
    return to_typed(dict_cfg)


def _hf_to_mcore(args) -> None:
    from nemo_rpo.distributed.launch import init_distributed, teardown_distributed
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.models.hf_io import load_hf_weights_, read_hf_state
    from nemo_rpo.training.builder import save_resolved_config
    from nemo_rpo.training.checkpoint import save_checkpoint

    cfg = _import_config(args)
    info = init_distributed(cfg.parallel, cfg.trainer.seed)
    try:
        if info.world_size != cfg.parallel.tp * cfg.parallel.pp:
            raise ValueError(
                f"hf-to-mcore: {info.world_size} processes for tp*pp = {cfg.parallel.tp * cfg.parallel.pp}"
            )
        model = build_gpt_model(cfg.model, cfg.parallel, cfg.model.vocab_size)
        count = load_hf_weights_(model, read_hf_state(cfg.model.init_from_hf), cfg.model)
        save_resolved_config(cfg, info)
        path = save_checkpoint(
            cfg.exp_dir, 0, [model], None, None, extra={"converted_from": cfg.model.init_from_hf}
        )
        if info.rank == 0:
            print(
                f"wrote {path} ({count} tensors on rank 0; tp={cfg.parallel.tp} pp={cfg.parallel.pp})",
                flush=True,
            )
    finally:
        teardown_distributed()


def _spawned(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")  # fmt: skip
    import torch

    torch.set_num_threads(1)
    try:
        _hf_to_mcore(_parser().parse_args(argv))
    except Exception as exc:  # noqa: BLE001 - every rank fails alike; rank 0 says it once
        if os.environ.get("NEMO_RPO_DEBUG") == "1":
            raise
        if rank == 0:
            print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)


def _launch_hf_to_mcore(args, argv: list[str]) -> None:
    world = args.tp * args.pp
    if world == 1 or "WORLD_SIZE" in os.environ:
        return _hf_to_mcore(args)
    import socket

    import torch.multiprocessing as mp

    _import_config(args)  # config errors once, before any process starts
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        mp.spawn(_spawned, args=(world, port, argv), nprocs=world, join=True)
    except mp.ProcessExitedException:
        sys.exit(2)  # the failing rank has printed its error line


# --------------------------------------------------------------------------------------------------
# mcore-to-hf
# --------------------------------------------------------------------------------------------------


def _find_run(path: Path):
    """``(run_dir, checkpoint_dir)`` for a run directory or a checkpoint directory inside one."""
    from nemo_rpo.training.checkpoint import find_latest_checkpoint

    if (path / "COMPLETE").is_file():
        return path.parent.parent, path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(
            f"{path}: no complete checkpoint (a run directory or checkpoints/step_* expected)"
        )
    return path, latest


def _run_config(run_dir: Path):
    from omegaconf import OmegaConf

    from nemo_rpo.config.schema import RPOConfig

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; mcore-to-hf needs the run's config.yaml for the model shape"
        )
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RPOConfig), OmegaConf.load(path)))
    # Export runs in one process: load any saved layout at TP=1/PP=1 with the local spec.
    model = dataclasses.replace(cfg.model, transformer_impl="local", fp8=None)
    return dataclasses.replace(cfg, model=model, parallel=dataclasses.replace(cfg.parallel, tp=1, pp=1))


def _mcore_to_hf(args) -> None:

    from nemo_rpo.data.tokenizer import build_tokenizer
    from nemo_rpo.distributed.launch import init_distributed, teardown_distributed
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.models.hf_io import export_hf_model, export_peft_adapter, read_hf_config
    from nemo_rpo.models.lora import adapters_disabled
    from nemo_rpo.training.checkpoint import load_checkpoint

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("mcore-to-hf runs in one process; start it without torchrun")
    run_dir, ckpt = _find_run(Path(args.ckpt))
    cfg = _run_config(run_dir)
    base_dir = args.hf_base or cfg.model.init_from_hf
    base = read_hf_config(base_dir, "--hf-base") if base_dir else None
    tokenizer_dir = base_dir or (cfg.data.tokenizer.path if cfg.data.tokenizer.type == "hf" else None)
    vocab = cfg.model.vocab_size or build_tokenizer(cfg.data.tokenizer).vocab_size
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab)
    lora = model_cfg.lora.rank > 0
    dtype = _DTYPES[cfg.model.precision]
    if args.dtype != "auto":
        dtype = _DTYPES[args.dtype]
    elif base is not None and isinstance(base.get("torch_dtype", base.get("dtype")), str):
        dtype = str(base.get("torch_dtype", base.get("dtype")))
    init_distributed(cfg.parallel, cfg.trainer.seed)
    try:
        model = build_gpt_model(model_cfg, cfg.parallel, vocab, init_seed=cfg.trainer.seed if lora else None)
        lora_base = _load_lora_base(ckpt, model, model_cfg) if lora else None
        load_checkpoint(ckpt, [model], None, None, restore_rng=False)
        out, count = export_hf_model(args.out, model, model_cfg, dtype=dtype, base=base,
                                     tokenizer_source=tokenizer_dir)  # fmt: skip
        note = "" if tokenizer_dir else " (no tokenizer: the run used the built-in byte tokenizer)"
        merged = " (LoRA adapters merged)" if lora else ""
        print(f"wrote {out} from {ckpt}: {count} tensors, {dtype}{merged}{note}", flush=True)
        if args.peft_out:
            if not lora:
                raise ValueError(f"--peft-out: {ckpt} is not a LoRA run (model.lora.rank is 0)")
            adapter_dir, peft_base = Path(args.peft_out), lora_base.get("hf")
            path, count = export_peft_adapter(
                adapter_dir, model, model_cfg, dtype=dtype, base_model=peft_base
            )
            if peft_base is None:  # the base weights are no Hugging Face directory yet: write them beside
                with adapters_disabled(model):
                    base_dir, _ = export_hf_model(adapter_dir / "base", model, model_cfg, dtype=dtype, base=base,
                                                  tokenizer_source=tokenizer_dir)  # fmt: skip
                peft_base = str(base_dir.resolve())
                _set_peft_base(adapter_dir, peft_base)
            print(f"wrote PEFT adapter {path}: {count} tensors, base model {peft_base}", flush=True)
    finally:
        teardown_distributed()


def _load_lora_base(ckpt: Path, model, model_cfg) -> dict:
    """Load a LoRA checkpoint's base weights from its pointer (``extra.json``'s ``lora_base``); the pointer."""
    from nemo_rpo.models.hf_io import load_hf_weights_, read_hf_state
    from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint

    pointer = json.loads((ckpt / "extra.json").read_text(encoding="utf-8")).get("lora_base")
    if pointer is None:
        raise KeyError(f"{ckpt / 'extra.json'}: no lora_base (where the LoRA run's base weights are)")
    if "checkpoint" in pointer:
        source = Path(pointer["checkpoint"])
        load_checkpoint(find_latest_checkpoint(source) or source, [model], None, None, restore_rng=False,
                        part="base")  # fmt: skip
    elif "hf" in pointer:
        load_hf_weights_(model, read_hf_state(pointer["hf"]), model_cfg)
    return pointer  # {"seed": n}: the model as built from the run's seed


def _set_peft_base(adapter_dir: Path, base: str) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    debug = os.environ.get("NEMO_RPO_DEBUG") == "1"
    try:
        from nemo_rpo.distributed.cpu_support import prepare_megatron_import

        prepare_megatron_import()
        if args.command == "hf-to-mcore":
            _launch_hf_to_mcore(args, argv)
        else:
            _mcore_to_hf(args)
    except Exception as exc:  # noqa: BLE001 - one line unless debugging
        if debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)


def _one_line(exc: BaseException) -> str:
    from nemo_rpo.cli.train import _one_line as describe

    if isinstance(exc, (FileNotFoundError, KeyError, ValueError)) and not type(exc).__module__.startswith(
        ("hydra", "omegaconf")
    ):
        text = exc.args[0] if exc.args else type(exc).__name__
        return str(text).splitlines()[0]
    return describe(exc)


if __name__ == "__main__":
    main()
