"""Offline step on a real model's shape: nemo-rpo vs TRL's DPOTrainer, step time and peak memory per row.

Every row runs in a fresh process (so its peak resident memory, ``ru_maxrss``, is its own), rows
alternate their order from round to round, and each round is one paired comparison:

* ``rpo``: nemo-rpo's offline step as training runs it (``train_step``, rpo_bwd, K=2, reference
  log-probs computed once up front, each prompt once per micro-batch, the chunked LM head + NLL of
  ``model.logps_chunk_size``);
* ``rpo_whole_logits`` (``--whole-logits``): the same with ``model.logps_chunk_size=0`` (the output
  layer's whole ``[tokens, V]`` logits, then the NLL), what the chunking saves;
* ``rpo_bf16`` (``--bf16``): ``model.precision=bf16`` (fp32 master weights), on CPUs with bf16 matmuls;
* ``rpo_recompute`` (``--recompute``): ``model.recompute_granularity=full`` (each layer's activations
  recomputed in the backward instead of kept: about one more forward per step for less peak memory);
  with ``--bf16`` also ``rpo_bf16_recompute``, both settings, against ``trl_bf16``;
* ``trl``: Hugging Face TRL's ``DPOTrainer`` with precomputed reference log-probs (``trl_dpo.py``);
* ``trl_bf16`` (``--bf16`` with TRL): the same with ``bf16=True`` (transformers' mixed precision:
  fp32 weights, bf16 autocast), the peer of ``rpo_bf16``: each ratio compares one number format.

Shape ``smollm2`` (default): SmolLM2-135M's (hidden 576, 30 layers, 9 heads / 3 KV heads, ffn 1536,
vocab 49,152, tied embeddings), random weights; 8 pairs x 256 tokens (64 prompt + 192 response) per
step, fp32, one micro-batch of 8 pairs on both sides. Prints per row and round s/step (median of the
timed steps), tokens/s and peak RSS, then the ratios against TRL per round::

    python benchmarks/bench_offline.py --trl-python /path/to/venv-with-trl/bin/python --rounds 5 \\
        --whole-logits --json benchmarks/results/<date>-offline-smollm2.json
    python benchmarks/bench_offline.py --no-trl --bf16 --rounds 5     # item: bf16 vs fp32, same run

One worker by hand: ``python benchmarks/bench_offline.py --worker rpo --steps 2``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from anchor import PROMPT_LEN, RESPONSE_LEN, SHAPES, peak_rss_mb  # noqa: E402

PAIRS_K = 2
ROW_NAMES = {
    "rpo": "nemo-rpo offline step (chunked LM head, default)",
    "rpo_whole_logits": "nemo-rpo, whole logits (model.logps_chunk_size=0)",
    "rpo_bf16": "nemo-rpo, model.precision=bf16 (fp32 master weights)",
    "rpo_recompute": "nemo-rpo, model.recompute_granularity=full",
    "rpo_bf16_recompute": "nemo-rpo, bf16 and recompute_granularity=full",
    "trl": "TRL DPOTrainer, precomputed reference",
    "trl_bf16": "TRL DPOTrainer, bf16=True (bf16 autocast, fp32 weights)",
}
# Each nemo-rpo row against the TRL row of its number format, when that row ran; else against "rpo".
PEERS = {
    "rpo": "trl",
    "rpo_whole_logits": "trl",
    "rpo_bf16": "trl_bf16",
    "rpo_recompute": "trl",
    "rpo_bf16_recompute": "trl_bf16",
}


def cpu_description() -> dict:
    """CPU model name and the ISA flags that decide the fast paths (from /proc/cpuinfo)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name in ("unknown", "x86_64", ""):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": name, "isa": [f for f in wanted if f in flags], "cpus": os.cpu_count()}


# --------------------------------------------------------------------------------------------------
# Worker: one row in this process
# --------------------------------------------------------------------------------------------------


def rpo_worker(args: argparse.Namespace) -> dict:
    """Build the policy as training does, precompute the reference, time ``train_step``."""
    import torch

    from nemo_rpo.config.schema import LossConfig, ModelConfig, RPOConfig, TrainerConfig
    from nemo_rpo.distributed.cpu_support import prepare_megatron_import, tune_glibc_malloc
    from nemo_rpo.distributed.launch import configure_cpu, init_distributed

    prepare_megatron_import()
    from bench_step import make_examples, make_microbatches, time_steps

    dims = SHAPES[args.shape]
    model = ModelConfig(
        num_layers=dims["num_layers"],
        hidden_size=dims["hidden_size"],
        num_attention_heads=dims["num_heads"],
        num_query_groups=dims["num_kv_heads"],
        ffn_hidden_size=dims["ffn_hidden_size"],
        vocab_size=dims["vocab_size"],
        max_seq_len=PROMPT_LEN + RESPONSE_LEN,
        untie_embeddings_and_output_weights=not dims["tied"],
        precision="bf16" if args.worker.startswith("rpo_bf16") else "fp32",
        transformer_impl="local",
        **({"logps_chunk_size": 0} if args.worker == "rpo_whole_logits" else {}),
        **({"recompute_granularity": "full"} if args.worker.endswith("_recompute") else {}),
    )
    trainer = TrainerConfig(max_steps=10_000, global_batch_size=args.prompts, micro_batch_size=args.micro_batch_size,
                            num_threads=args.threads, keep_freed_memory=not args.default_malloc)  # fmt: skip
    cfg = RPOConfig(k=PAIRS_K, exp_dir="/tmp/bench_offline", loss=LossConfig(name="rpo_bwd"), model=model,
                    trainer=trainer)  # fmt: skip
    configure_cpu(cfg.trainer.num_threads, cfg.trainer.keep_freed_memory)
    if cfg.trainer.keep_freed_memory:
        tune_glibc_malloc()
    init_distributed(cfg.parallel, cfg.trainer.seed)
    from nemo_rpo.models.gpt import shares_prompt
    from nemo_rpo.training.builder import build_policy
    from nemo_rpo.training.step import sequence_logps, train_step

    policy, optimizer, scheduler = build_policy(cfg, cfg.model.vocab_size)
    examples = make_examples(args.prompts, PAIRS_K, cfg.model.vocab_size, args.seed)
    microbatches = make_microbatches(examples, args.micro_batch_size, share_prompt=shares_prompt(cfg.model))
    ref_logps = sequence_logps(policy, microbatches, len(examples))
    losses = []

    def step() -> None:
        result = train_step(
            policy, optimizer, scheduler, microbatches, lambda b: ref_logps[b.index], cfg.loss
        )
        losses.append(result.report["loss_sum"] / max(result.report["num_prompts"], 1.0))

    samples = time_steps(step, args.warmup, args.steps)
    return {"samples": samples, "peak_rss_mb": peak_rss_mb(), "losses": losses,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def run_row(row: str, args: argparse.Namespace) -> dict:
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps), "--prompts", str(args.prompts),
              "--threads", str(args.threads), "--seed", str(args.seed), "--shape", args.shape,
              *(["--default-malloc"] if args.default_malloc else [])]  # fmt: skip
    if row.startswith("trl"):
        cmd = [args.trl_python, str(HERE / "trl_dpo.py"), *common, *(["--bf16"] if row == "trl_bf16" else [])]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", row, *common,
               "--micro-batch-size", str(args.micro_batch_size)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"
        sys.exit(f"error: row {row} failed ({' '.join(cmd[:3])} ...): {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    walls = [s["wall"] for s in out["samples"]]
    out["s_per_step"] = statistics.median(walls)
    return out


def summarize(rounds: list[dict[str, dict]], rows: list[str], tokens_per_step: int) -> dict:
    table = {}
    for row in rows:
        steps = [r[row]["s_per_step"] for r in rounds]
        rss = [r[row]["peak_rss_mb"] for r in rounds]
        table[row] = {"s_per_step_rounds": steps, "peak_rss_mb_rounds": rss,
                      "cpu_s_per_step": statistics.median(statistics.median(s["cpu"] for s in r[row]["samples"]) for r in rounds),
                      "s_per_step": statistics.median(steps), "tokens_per_s": tokens_per_step / statistics.median(steps),
                      "peak_rss_mb": statistics.median(rss)}  # fmt: skip
    ratios = {}
    pairs = [
        (row, PEERS[row] if PEERS.get(row) in rows else "rpo") for row in rows if not row.startswith("trl")
    ]
    if "rpo_bf16" in rows and "trl_bf16" in rows:
        pairs.append(("rpo_bf16", "rpo"))  # bf16 against fp32, same run
    if "rpo_recompute" in rows:
        pairs.append(("rpo_recompute", "rpo"))  # what recomputation costs and saves, same run
    for row, other in pairs:
        if row == other:
            continue
        speed = [r[other]["s_per_step"] / r[row]["s_per_step"] for r in rounds]
        memory = [r[row]["peak_rss_mb"] / r[other]["peak_rss_mb"] for r in rounds]
        ratios[f"{row}_vs_{other}"] = {
            "speed_per_round": speed,
            "speed_ratio_of_medians": table[other]["s_per_step"] / table[row]["s_per_step"],
            "memory_per_round": memory,
            "memory_ratio_of_medians": table[row]["peak_rss_mb"] / table[other]["peak_rss_mb"],
        }
    return {"rows": table, "ratios": ratios}


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--worker", choices=[r for r in ROW_NAMES if not r.startswith("trl")], help=argparse.SUPPRESS
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per row per round")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per row per round")
    parser.add_argument("--prompts", type=int, default=8, help="preference pairs per step")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--default-malloc", action="store_true", help="glibc as it comes on every row")
    parser.add_argument("--whole-logits", action="store_true", help="add the rpo_whole_logits row")
    parser.add_argument("--bf16", action="store_true", help="add the rpo_bf16 row (and trl_bf16 with TRL)")
    parser.add_argument("--recompute", action="store_true", help="add the rpo_recompute row")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL row")
    parser.add_argument("--trl-python", default=sys.executable, help="interpreter with trl installed")
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(rpo_worker(args)))
        return None

    wanted = {"rpo_whole_logits": args.whole_logits, "rpo_bf16": args.bf16, "rpo_recompute": args.recompute,
              "rpo_bf16_recompute": args.recompute and args.bf16, "trl": not args.no_trl,
              "trl_bf16": args.bf16 and not args.no_trl}  # fmt: skip
    rows = ["rpo", *(row for row, on in wanted.items() if on)]
    tokens_per_step = args.prompts * PAIRS_K * (PROMPT_LEN + RESPONSE_LEN)
    cpu = cpu_description()
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"CPU: {cpu['model']} ({', '.join(cpu['isa'])}; {cpu['cpus']} cpus); shape {args.shape}; "
          f"{tokens_per_step} tokens/step; {args.threads} threads; load average {load_start[0]:.2f}")  # fmt: skip
    rounds: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        result = {row: run_row(row, args) for row in order}
        rounds.append(result)
        if args.json:  # after every round, so an interrupted run keeps what it measured
            Path(args.json).write_text(
                json.dumps({"cpu": cpu, "args": vars(args), "rounds": rounds}, indent=1)
            )
        print(f"round {r + 1}: " + "; ".join(
            f"{row} {result[row]['s_per_step']:.2f} s/step, {result[row]['peak_rss_mb']:.0f} MB" for row in order), flush=True)  # fmt: skip
    summary = summarize(rounds, rows, tokens_per_step)
    load_end = os.getloadavg()
    print(f"\n{'row':<58} {'s/step':>8} {'tokens/s':>9} {'peak RSS MB':>12} {'CPU s/step':>11}")
    for row in rows:
        t = summary["rows"][row]
        print(f"{ROW_NAMES[row]:<58} {t['s_per_step']:>8.2f} {t['tokens_per_s']:>9.0f} {t['peak_rss_mb']:>12.0f} "
              f"{t['cpu_s_per_step']:>11.2f}")  # fmt: skip
    for name, ratio in summary["ratios"].items():
        print(f"{name}: speed {ratio['speed_ratio_of_medians']:.2f}x (per round "
              f"{', '.join(f'{x:.2f}' for x in ratio['speed_per_round'])}); peak memory "
              f"{ratio['memory_ratio_of_medians']:.2f}x (per round {', '.join(f'{x:.2f}' for x in ratio['memory_per_round'])})")  # fmt: skip
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    record = {"started": started.isoformat(timespec="seconds"), "cpu": cpu, "args": vars(args),
              "tokens_per_step": tokens_per_step, "load_average_start": load_start, "load_average_end": load_end,
              "rounds": rounds, **summary}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
