"""GPU check: bf16 training step time and MFU of a ~1B Llama-shaped policy, and sampling tokens/s.

Run by ``benchmarks/gpu_check.sh`` on one GPU (H100: under 8 minutes), which saves the output. Rows:

* ``train_local``: offline rpo_bwd step (``train_step``, megatron DDP + 16-bit optimizer with fp32 master
  weights, chunked LM head), local spec, bf16;
* ``train_te``: the same with the Transformer Engine spec, where ``transformer_engine`` imports;
* ``sample``: ``MegatronGenerator`` (KV cache), K samples per prompt, tokens/s over generated tokens.

Shape (``--shape 1b``): hidden 2048, 16 layers, 32 heads / 8 KV heads, ffn 8192, vocab 32,768, tied: 1.04B
parameters. MFU uses Megatron-LM's FLOPs convention (6 N_matmul + 12 L h s per token, LM head included)
against ``--peak-tflops`` (989, an H100 SXM's dense bf16).

``--dry-run`` runs every row on the CPU with a tiny model and one step (what CI runs: the script itself
is tested, ``tests/unit/test_gpu_check.py``); the TE row is skipped where TE does not import::

    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SHAPES = {
    "1b": {"num_layers": 16, "hidden_size": 2048, "num_attention_heads": 32, "num_query_groups": 8,
           "ffn_hidden_size": 8192, "vocab_size": 32768},
    "tiny": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
             "ffn_hidden_size": 128, "vocab_size": 512},
}  # fmt: skip


def te_importable() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as none here
        return False
    return True


def build(args: argparse.Namespace, impl: str):  # noqa: ANN201
    from nemo_rpo.config.schema import LossConfig, ModelConfig, OptimConfig, RPOConfig, TrainerConfig

    model = ModelConfig(**SHAPES[args.shape], max_seq_len=256, precision=args.precision, transformer_impl=impl,
                        share_prompt=None if impl == "local" else False)  # fmt: skip
    trainer = TrainerConfig(
        max_steps=1000, global_batch_size=args.prompts, micro_batch_size=args.micro_batch_size
    )
    return RPOConfig(k=2, exp_dir="/tmp/gpu_check", loss=LossConfig(name="rpo_bwd"), model=model, trainer=trainer,
                     optim=OptimConfig(lr=1e-5, warmup_steps=0))  # fmt: skip


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_row(args: argparse.Namespace, impl: str) -> dict:
    import torch
    from bench_step import count_params, flops_per_token, make_examples, make_microbatches

    from nemo_rpo.models.gpt import shares_prompt
    from nemo_rpo.training.builder import build_policy
    from nemo_rpo.training.step import sequence_logps, train_step

    cfg = build(args, impl)
    model, optimizer, scheduler = build_policy(cfg, cfg.model.vocab_size)
    examples = make_examples(args.prompts, cfg.k, cfg.model.vocab_size, 0)
    micro = make_microbatches(examples, args.micro_batch_size, share_prompt=shares_prompt(cfg.model))
    if torch.cuda.is_available():
        micro = [mb.to(torch.cuda.current_device()) for mb in micro]
    ref = sequence_logps(model, micro, len(examples))
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        synchronize()
        t0 = time.perf_counter()
        result = train_step(
            model, optimizer, scheduler, micro, lambda b: ref[b.index.cpu()].to(b.input_ids.device), cfg.loss
        )
        synchronize()
        losses.append(result.report["loss_sum"] / max(result.report["num_prompts"], 1.0))
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    _, n_matmul = count_params(model)
    seq = micro[0].input_ids.shape[1] if not shares_prompt(cfg.model) else 256
    tokens = args.prompts * cfg.k * 256
    flops = flops_per_token(n_matmul, cfg.model.num_layers, cfg.model.hidden_size, seq) * tokens
    step = statistics.median(times)
    return {"impl": impl, "s_per_step": step, "tokens_per_s": tokens / step, "tflops": flops / step / 1e12,
            "mfu": flops / step / 1e12 / args.peak_tflops, "params_matmul": n_matmul, "losses": losses,
            "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}  # fmt: skip


def sample_row(args: argparse.Namespace) -> dict:
    import torch

    from nemo_rpo.config.schema import GenerationConfig
    from nemo_rpo.generation.megatron_generator import MegatronGenerator
    from nemo_rpo.training.builder import build_policy_model

    cfg = build(args, "local")
    model = build_policy_model(cfg, cfg.model.vocab_size)
    vocab = cfg.model.vocab_size
    generator = MegatronGenerator(model, GenerationConfig(temperature=1.0, max_new_tokens=args.new_tokens),
                                  eos_id=vocab - 1, pad_id=0, vocab_size=vocab)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, vocab - 1, (64,), generator=gen).tolist() for _ in range(args.sample_prompts)]
    rates = []
    for i in range(1 + args.sample_rounds):
        synchronize()
        t0 = time.perf_counter()
        out = generator.generate(prompts, args.k, torch.Generator().manual_seed(i))
        synchronize()
        if i:
            rates.append(int(out.response_lengths.sum()) / (time.perf_counter() - t0))
    return {
        "tokens_per_s": statistics.median(rates),
        "rows": len(prompts) * args.k,
        "new_tokens": args.new_tokens,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny model on the CPU, one step: checks the script"
    )
    parser.add_argument("--out", default=None, help="write the results here (JSON)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--prompts", type=int, default=32, help="preference pairs per step")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--sample-prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--sample-rounds", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.shape, args.prompts, args.micro_batch_size, args.warmup, args.steps = "tiny", 2, 2, 0, 1
        args.sample_prompts, args.new_tokens, args.sample_rounds, args.k = 2, 4, 1, 2

    import torch

    from nemo_rpo.config.schema import ParallelConfig
    from nemo_rpo.distributed.cpu_support import prepare_megatron_import
    from nemo_rpo.distributed.launch import init_distributed

    if not torch.cuda.is_available() and not args.dry_run:
        sys.exit(
            "error: benchmarks/gpu_check.py: no CUDA device (use --dry-run to check the script on a CPU)"
        )
    prepare_megatron_import()
    init_distributed(ParallelConfig(), seed=0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor()})"
    record: dict = {"device": device, "torch": torch.__version__, "args": vars(args), "rows": {}}
    print(f"device: {device}; shape {args.shape}; {args.precision}", flush=True)
    impls = ["local", *(["transformer_engine"] if te_importable() else [])]
    for impl in impls:
        row = train_row(args, impl)
        record["rows"][f"train_{'te' if impl != 'local' else 'local'}"] = row
        print(f"train ({impl} spec): {row['s_per_step']:.3f} s/step, {row['tokens_per_s']:.0f} tokens/s, "
              f"{row['tflops']:.1f} TFLOP/s, MFU {100 * row['mfu']:.1f}% of {args.peak_tflops:.0f}", flush=True)  # fmt: skip
    if len(impls) == 1:
        record["rows"]["train_te"] = {"skipped": "transformer_engine does not import"}
        print("train (transformer_engine spec): skipped, transformer_engine does not import")
    record["rows"]["sample"] = row = sample_row(args)
    print(f"sample (local spec, KV cache): {row['tokens_per_s']:.0f} tokens/s over {row['rows']} rows x "
          f"{row['new_tokens']} new tokens", flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
