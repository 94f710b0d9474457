"""LoRA vs full fine-tuning on the embedded offline default (``nemo-rpo-train``, rpo_bwd, K=4, tiny model).

Each row is one ``nemo-rpo-train`` process (so its peak resident memory, ``ru_maxrss`` from ``wait4``, is
its own); rows alternate their order from round to round. Per row and round: final loss and implicit-reward
accuracy (means of the last 10 steps), median step time, peak RSS, the size of the last checkpoint, the
number of trainable parameters, and the held-out judge reward the run prints::

    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py --rounds 3 --steps 120 \\
        --json benchmarks/results/<date>-lora.json
    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py --shape anchor --rows full lora_r8 --steps 30 ...

``--mode online`` (``online.sft_warmup_steps=0``): where the full model keeps a second, frozen copy as the
reference and LoRA does not. ``--shape anchor``: the same data on the performance anchor's model (4 layers, hidden 256, 8 heads, ffn 704,
vocabulary 8,192, untied: benchmarks/anchor.py), where the weights, not the interpreter, set the memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from anchor import FFN_HIDDEN_SIZE, HIDDEN_SIZE, NUM_HEADS, NUM_LAYERS, VOCAB_SIZE  # noqa: E402
from bench_offline import cpu_description  # noqa: E402

SHAPES = {
    "tiny": [],  # the embedded default's model
    "anchor": [f"model.num_layers={NUM_LAYERS}", f"model.hidden_size={HIDDEN_SIZE}",
               f"model.num_attention_heads={NUM_HEADS}", f"model.ffn_hidden_size={FFN_HIDDEN_SIZE}",
               f"model.vocab_size={VOCAB_SIZE}", "model.untie_embeddings_and_output_weights=true"],
}  # fmt: skip

# online: the embedded synthetic task and judge, no SFT warm-up (its cost is not the comparison): the full
# model keeps a frozen reference copy, LoRA runs the reference as the policy with its adapters off
MODES = {"offline": [], "online": ["mode=online", "online.sft_warmup_steps=0"]}

ROWS = {
    "full": [],
    "lora_r8": ["model.lora.rank=8"],
    "lora_r8_lr1e-2": ["model.lora.rank=8", "optim.lr=1e-2"],
}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_row(name: str, steps: int, work: Path, shape: str = "tiny", mode: str = "offline") -> dict:
    exp = work / name
    cmd = [sys.executable, "-m", "nemo_rpo.train", f"exp_dir={exp}", f"trainer.max_steps={steps}",
           "logging.progress_bar=false", "logging.tensorboard=false", *SHAPES[shape], *MODES[mode], *ROWS[name]]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{name} failed:\n{out[-3000:]}")
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    last = rows[-10:]
    accuracy = [r["accuracy"] for r in last if "accuracy" in r]
    judge = re.search(r"held-out judge reward .*?step 0 ([0-9.]+) -> step \d+ ([0-9.]+)", out)
    ckpt = sorted((exp / "checkpoints").glob("step_*"))[-1]
    trainable = re.search(r"trainable parameters: ([0-9,]+)", out)
    return {
        "row": name,
        "final_loss": statistics.mean(r["loss"] for r in last),
        "final_accuracy": statistics.mean(accuracy) if accuracy else None,
        "final_reward": statistics.mean(r["reward"] for r in last) if "reward" in last[0] else None,
        "step_time_s": statistics.median(r["step_time_s"] for r in rows[1:]),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "checkpoint_bytes": _dir_bytes(ckpt),
        "judge_before": float(judge.group(1)) if judge else None,
        "judge_after": float(judge.group(2)) if judge else None,
        "trainable_params": int(trainable.group(1).replace(",", "")) if trainable else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--mode", choices=list(MODES), default="offline")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "cpu": cpu_description(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "steps": args.steps, "shape": args.shape, "mode": args.mode,
               "rounds": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        for r in range(args.rounds):
            order = args.rows if r % 2 == 0 else list(reversed(args.rows))
            load = os.getloadavg()[0]
            rows = []
            for name in order:
                row = run_row(name, args.steps, Path(tmp) / f"round{r}", args.shape, args.mode)
                rows.append(row)
                print(json.dumps({"round": r + 1, "load": round(load, 1), **row}), flush=True)
            results["rounds"].append({"load_average": load, "rows": rows})
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
