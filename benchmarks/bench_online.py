"""Online step on a real model's shape: nemo-rpo vs TRL's RLOOTrainer, step time, CPU time and peak memory.

One online step: sample K=4 responses for each of 8 prompts (64 tokens each) to exactly N new tokens
(temperature 1, KV cache), score them with ``online_workload.reward_of_text``, reference log-probs, the
loss, backward and the optimizer step. Rows:

* ``rpo``: nemo-rpo's online step as ``nemo-rpo-train mode=online`` takes it: ``algorithms.online.Online``
  built from an ``RPOConfig`` (``loss=rpo_sqloo``, i.e. RLOO, K=4, one micro-batch of 8 prompts,
  ``model.init_from_hf=DIR``, ``data.tokenizer=hf DIR``, ``data.prompts_path`` a JSONL of the prompts), its
  ``Online.step`` called step by step. Two things are set on the built object: the reward model (the
  workload's function; ``RewardConfig`` has no slot for an in-process Python function) and the generator's
  ``eos_id=-1`` (every response runs to N tokens, as TRL's ``min_new_tokens=N``). Not in the timed steps:
  the trainer loop's logging and checkpoint saves.
* ``trl``: TRL's ``RLOOTrainer`` (``trl_online.py``; its docstring says how it is configured).

Both load the same random-weight ``LlamaForCausalLM`` of SmolLM2-135M's shape (hidden 576, 30 layers,
9 heads / 3 KV heads, ffn 1536, vocab 49,152, tied), written once per run to ``--work`` with a word-level
tokenizer (token ``t<i>`` is id ``i``). fp32, ``--threads`` threads, glibc keeping freed memory on both.
Every row runs in a fresh process per round (its peak RSS, ``ru_maxrss``, is its own: loading, the
reference model, the steps), the rows' order rotating each round; ``--warmup`` untimed steps then
``--steps`` timed ones. Per row and round: s/step (median of the timed steps), CPU s/step (all threads),
tokens/s (generated + trained tokens), peak RSS, the load average before the row; per round the ratios
TRL / nemo-rpo of wall and CPU time, and of the medians over rounds::

    python benchmarks/bench_online.py --trl-python /tmp/trlvenv/bin/python --rounds 5 --new-tokens 64 \\
        --json benchmarks/results/<date>-online-smollm2.json
    python benchmarks/bench_online.py --worker rpo --model-dir runs/bench_online/smollm2-random  # one row
    python benchmarks/bench_online.py --profile rpo     # torch.profiler table of one timed nemo-rpo step
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from anchor import SHAPES, mark, peak_rss_mb, step_sample  # noqa: E402
from bench_offline import cpu_description  # noqa: E402
from online_workload import PROMPT_LEN, K, ids_to_text, prompt_ids, reward_of_text, tokens_per_step  # noqa: E402

ROW_NAMES = {
    "rpo": "nemo-rpo online step (Online.step, rpo_sqloo K=4)",
    "trl": "TRL 1.16 RLOOTrainer (num_generations=4)",
}


def word_tokenizer(vocab_size: int):  # noqa: ANN201 - a transformers PreTrainedTokenizerFast
    """Word-level tokenizer: ``t<i>`` is id ``i``, the last id is ``</s>`` (EOS), ``t0`` doubles as pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab_size - 1)} | {"</s>": vocab_size - 1}
    core = Tokenizer(models.WordLevel(words, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="t0", unk_token="t0")


def prepare_model_dir(model_dir: Path, seed: int) -> Path:
    """A random-weight ``LlamaForCausalLM`` of SmolLM2-135M's shape and the word-level tokenizer (once)."""
    if (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file():
        return model_dir
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = SHAPES["smollm2"]
    vocab = dims["vocab_size"]
    tokenizer = word_tokenizer(vocab)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=dims["hidden_size"], intermediate_size=dims["ffn_hidden_size"],
                         num_hidden_layers=dims["num_layers"], num_attention_heads=dims["num_heads"],
                         num_key_value_heads=dims["num_kv_heads"], max_position_embeddings=2048,
                         tie_word_embeddings=dims["tied"], rope_theta=100000.0, rms_norm_eps=1e-5, pad_token_id=0,
                         eos_token_id=vocab - 1, bos_token_id=None)  # fmt: skip
    model = LlamaForCausalLM(config).float()
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(model_dir)
    return model_dir


# --------------------------------------------------------------------------------------------------
# Worker: the nemo-rpo row in this process
# --------------------------------------------------------------------------------------------------


class TokenReward:
    """The workload's reward as a nemo-rpo ``RewardModel``: ``reward_of_text`` of each decoded response."""

    def score(self, prompts: list[str], responses: list[str]):
        import torch

        del prompts
        return torch.tensor([reward_of_text(r) for r in responses], dtype=torch.float32)


def build_online(args: argparse.Namespace, work: Path):
    """``Online`` built as ``train()`` builds it (after ``configure_cpu`` / ``init_distributed``)."""
    from nemo_rpo.config.schema import (
        CheckpointConfig,
        DataConfig,
        GenerationConfig,
        LossConfig,
        ModelConfig,
        OnlineConfig,
        OptimConfig,
        RPOConfig,
        TokenizerConfig,
        TrainerConfig,
    )
    from nemo_rpo.distributed.cpu_support import prepare_megatron_import

    prepare_megatron_import()
    from nemo_rpo.algorithms.online import Online
    from nemo_rpo.distributed.launch import configure_cpu, init_distributed
    from nemo_rpo.generation import MegatronGenerator
    from nemo_rpo.models.hf_io import read_hf_config
    from nemo_rpo.models.hf_mapping import model_fields_from_hf

    model_dir = str(Path(args.model_dir).resolve())
    fields = model_fields_from_hf(read_hf_config(model_dir))
    total = args.warmup + args.steps
    vocab = fields["vocab_size"]
    prompts_path = work / "prompts.jsonl"
    with open(prompts_path, "w") as f:
        for ids in prompt_ids(args.prompts * total, PROMPT_LEN, vocab, args.seed):
            f.write(json.dumps({"prompt": ids_to_text(ids)}) + "\n")
    cfg = RPOConfig(
        mode="online", k=K, exp_dir=str(work / "exp"), loss=LossConfig(name="rpo_sqloo", beta=0.1, eta=1.0),
        model=ModelConfig(**fields, max_seq_len=PROMPT_LEN + args.new_tokens, transformer_impl="local",
                          init_from_hf=model_dir),
        data=DataConfig(prompts_path=str(prompts_path), shuffle=False, max_prompt_len=PROMPT_LEN,
                        tokenizer=TokenizerConfig(type="hf", path=model_dir)),
        generation=GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens),
        trainer=TrainerConfig(max_steps=total, global_batch_size=args.prompts, micro_batch_size=args.prompts,
                              num_threads=args.threads, keep_freed_memory=not args.default_malloc, seed=args.seed),
        optim=OptimConfig(lr=1e-6, min_lr=1e-6, warmup_steps=0, decay_style="constant", clip_grad=1.0),
        online=OnlineConfig(sft_warmup_steps=0), checkpoint=CheckpointConfig(resume=False),
    )  # fmt: skip
    configure_cpu(cfg.trainer.num_threads, cfg.trainer.keep_freed_memory, cfg.trainer.deterministic)
    info = init_distributed(cfg.parallel, cfg.trainer.seed)
    algo = Online(cfg)
    algo.build(info)
    algo.reward_model = TokenReward()
    algo.generator = MegatronGenerator(algo.model, cfg.generation, eos_id=-1, pad_id=algo.tokenizer.pad_id,
                                       vocab_size=algo.tokenizer.vocab_size)  # fmt: skip
    algo.start(0)
    return algo


def rpo_worker(args: argparse.Namespace) -> dict:
    """Build the online algorithm, take ``warmup`` untimed and ``steps`` timed steps."""
    import torch

    with tempfile.TemporaryDirectory(prefix="bench_online_") as tmp:
        algo = build_online(args, Path(tmp))
        samples, phases, losses, rewards = [], [], [], []
        for step in range(args.warmup + args.steps):
            start = mark()
            result, extra = algo.step(step)
            end = mark()
            if step >= args.warmup:
                samples.append(step_sample(start, end))
                phases.append({k: extra[k] for k in ("time_generate_s", "time_score_s", "time_reference_s",
                                                     "time_train_s")})  # fmt: skip
            losses.append(result.report["loss_sum"] / max(result.report["num_prompts"], 1.0))
            rewards.append(extra["reward"])
            if extra["response_length"] != args.new_tokens:
                raise RuntimeError(f"rpo: responses of {extra['response_length']} tokens on average, "
                                   f"expected exactly {args.new_tokens}")  # fmt: skip
    return {"samples": samples, "phases": phases, "peak_rss_mb": peak_rss_mb(), "losses": losses,
            "rewards": rewards, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def profile_rpo(args: argparse.Namespace) -> None:
    """torch.profiler table (self CPU time) of one nemo-rpo online step after one untimed step."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory(prefix="bench_online_") as tmp:
        algo = build_online(args, Path(tmp))
        algo.step(0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tick = time.perf_counter()
            _, extra = algo.step(1)
            print(f"step {time.perf_counter() - tick:.2f} s: " + ", ".join(
                f"{k} {extra[k]:.2f}" for k in ("time_generate_s", "time_score_s", "time_reference_s", "time_train_s")))  # fmt: skip
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def run_row(row: str, args: argparse.Namespace, model_dir: Path) -> dict:
    common = ["--model-dir", str(model_dir), "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens),
              "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
              "--seed", str(args.seed), *(["--default-malloc"] if args.default_malloc else [])]  # fmt: skip
    if row == "trl":
        cmd = [args.trl_python, str(HERE / "trl_online.py"), *common]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", row, *common]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    load = [round(x, 2) for x in os.getloadavg()]
    tick = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"
        sys.exit(f"error: row {row} failed ({' '.join(cmd[:3])} ...): {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - tick
    out["load_average"] = load
    out["s_per_step"] = statistics.median(s["wall"] for s in out["samples"])
    out["cpu_s_per_step"] = statistics.median(s["cpu"] for s in out["samples"])
    return out


def summarize(rounds: list[dict[str, dict]], rows: list[str], tokens: int) -> dict:
    """Per row the medians over rounds; TRL / nemo-rpo per round and of the medians (wall, CPU, memory)."""
    table = {}
    for row in rows:
        wall = [r[row]["s_per_step"] for r in rounds]
        cpu = [r[row]["cpu_s_per_step"] for r in rounds]
        rss = [r[row]["peak_rss_mb"] for r in rounds]
        table[row] = {"s_per_step_rounds": wall, "cpu_s_per_step_rounds": cpu, "peak_rss_mb_rounds": rss,
                      "s_per_step": statistics.median(wall), "cpu_s_per_step": statistics.median(cpu),
                      "tokens_per_s": tokens / statistics.median(wall), "peak_rss_mb": statistics.median(rss)}  # fmt: skip
    ratios = {}
    if "trl" in rows and "rpo" in rows:
        t, n = table["trl"], table["rpo"]
        ratios["rpo_vs_trl"] = {
            "speed_per_round": [r["trl"]["s_per_step"] / r["rpo"]["s_per_step"] for r in rounds],
            "cpu_per_round": [r["trl"]["cpu_s_per_step"] / r["rpo"]["cpu_s_per_step"] for r in rounds],
            "memory_per_round": [r["rpo"]["peak_rss_mb"] / r["trl"]["peak_rss_mb"] for r in rounds],
            "speed_ratio_of_medians": t["s_per_step"] / n["s_per_step"],
            "cpu_ratio_of_medians": t["cpu_s_per_step"] / n["cpu_s_per_step"],
            "memory_ratio_of_medians": n["peak_rss_mb"] / t["peak_rss_mb"],
        }
    return {"rows": table, "ratios": ratios}


def phase_line(result: dict) -> str:
    """Median seconds per phase of a row's timed steps."""
    phases = result.get("phases") or []
    if not phases:
        return ""
    keys = sorted({k for p in phases for k in p})
    return ", ".join(
        f"{k.removeprefix('time_')} {statistics.median(p.get(k, 0.0) for p in phases):.2f}" for k in keys
    )


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["rpo"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile", choices=["rpo"], help="torch.profiler table of one nemo-rpo step, then exit"
    )
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument(
        "--model-dir", default=None, help="HF model directory (default: <work>/smollm2-random)"
    )
    parser.add_argument("--work", default="runs/bench_online")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per row per round")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per row per round")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (each sampled K=4 times)")
    parser.add_argument(
        "--new-tokens", type=int, default=64, help="exactly this many sampled tokens per response"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--default-malloc", action="store_true", help="glibc as it comes on every row")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL row")
    parser.add_argument("--trl-python", default=sys.executable, help="interpreter with trl installed")
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args(argv)
    if args.worker or args.profile:
        if args.model_dir is None:
            args.model_dir = str(prepare_model_dir(Path(args.work) / "smollm2-random", args.seed))
        if args.profile:
            profile_rpo(args)
        else:
            print(json.dumps(rpo_worker(args)))
        return None

    model_dir = Path(args.model_dir) if args.model_dir else Path(args.work) / "smollm2-random"
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model_dir(model_dir, args.seed).resolve()
    rows = ["rpo", *([] if args.no_trl else ["trl"])]
    tokens = tokens_per_step(args.prompts, K, PROMPT_LEN, args.new_tokens)
    cpu = cpu_description()
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"CPU: {cpu['model']} ({', '.join(cpu['isa'])}; {cpu['cpus']} cpus); {args.prompts} prompts x K={K} x "
          f"{PROMPT_LEN}+{args.new_tokens} tokens: {tokens['generated']} generated + {tokens['trained']} trained "
          f"tokens/step; {args.threads} threads; load average {load_start[0]:.2f}", flush=True)  # fmt: skip
    rounds: list[dict[str, dict]] = []
    record = {"started": started.isoformat(timespec="seconds"), "cpu": cpu, "args": vars(args), "tokens_per_step": tokens,
              "load_average_start": load_start, "rounds": rounds, "complete": False}  # fmt: skip
    for r in range(args.rounds):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        result = {}
        for row in order:
            result[row] = out = run_row(row, args, model_dir)
            print(f"round {r + 1} {row:>4}: {out['s_per_step']:7.2f} s/step (CPU {out['cpu_s_per_step']:6.2f} s), "
                  f"{tokens['total'] / out['s_per_step']:6.1f} tokens/s, peak RSS {out['peak_rss_mb']:6.0f} MB, "
                  f"load {out['load_average'][0]:.2f}; {phase_line(out)}", flush=True)  # fmt: skip
        rounds.append(result)
        if len(rows) == 2:
            print(f"round {r + 1} TRL / nemo-rpo: wall {result['trl']['s_per_step'] / result['rpo']['s_per_step']:.2f}x, "
                  f"CPU {result['trl']['cpu_s_per_step'] / result['rpo']['cpu_s_per_step']:.2f}x", flush=True)  # fmt: skip
        if args.json:  # after every round, so an interrupted run keeps what it measured
            Path(args.json).write_text(
                json.dumps({**record, **summarize(rounds, rows, tokens["total"])}, indent=1)
            )
    summary = summarize(rounds, rows, tokens["total"])
    load_end = os.getloadavg()
    print(f"\n{'row':<52} {'s/step':>8} {'CPU s':>7} {'tokens/s':>9} {'peak RSS MB':>12}")
    for row in rows:
        t = summary["rows"][row]
        print(f"{ROW_NAMES[row]:<52} {t['s_per_step']:>8.2f} {t['cpu_s_per_step']:>7.2f} {t['tokens_per_s']:>9.1f} "
              f"{t['peak_rss_mb']:>12.0f}")  # fmt: skip
    for name, ratio in summary["ratios"].items():
        print(f"{name}: speed {ratio['speed_ratio_of_medians']:.2f}x (per round "
              f"{', '.join(f'{x:.2f}' for x in ratio['speed_per_round'])}); CPU time {ratio['cpu_ratio_of_medians']:.2f}x "
              f"(per round {', '.join(f'{x:.2f}' for x in ratio['cpu_per_round'])}); peak memory "
              f"{ratio['memory_ratio_of_medians']:.2f}x")  # fmt: skip
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}")
    record.update(summary, load_average_end=load_end, complete=True)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
