"""Learning-reference comparison: nemo-rpo (through its CLI) against ``reference.py``, several seeds each.

1. A shared start: ``nemo-rpo-train loss=sft`` for 40 steps on the online warm-up's data (the embedded
   online default's ``online.sft_warmup_steps``), exported with ``nemo-rpo-convert mcore-to-hf``. Both
   implementations start every run from these weights (nemo-rpo: ``checkpoint.init_from``, warm-up 0).
2. Online parts, per seed: ``nemo-rpo-train mode=online loss=rpo_sqloo loss.eta=1`` (K=4, 32 prompts,
   beta 0.1, lr 3e-3, warmup 5, cosine, clip 1.0; every setting passed explicitly to both sides, see
   ``OPTIM``/``ONLINE``) and ``reference.py online`` (RLOO); seed ``s`` gives both the same prompt order.
   ``online_task``: the default judge (the synthetic task's similarity to the answer).
   ``online_vowel``: ``tests/functional/toy_judges.py:vowel_fraction``, a judge this tiny policy learns
   in a few dozen steps, so a weaker update would show. The reference samples with ``torch.multinomial``.
   ``online_vowel_coupled``: the same nemo-rpo runs; the reference draws nemo-rpo's random stream
   (``--sampler coupled``), so both draw the same samples while their policies agree.
3. ``dpo``: ``nemo-rpo-train loss=dpo`` and ``reference.py dpo`` on one fixed preference file (the
   bundled ``synthetic_prefs_k2.jsonl``), same data order per seed; the final policies (nemo-rpo's
   exported to HF) are scored by the same evaluator (``reference.evaluate``: judge reward on 256
   held-out prompts, greedy and 4 samples at temperature 1).

Per part and group it prints the per-seed statistic (mean over the last 10 steps, or the final
evaluation), mean ± sd over seeds, and the verdict: the groups agree when
``|mean_a - mean_b| < 2 * sqrt(sd_a^2 / n_a + sd_b^2 / n_b)`` (two standard errors of the difference).
Curves go to ``<out>/<part>.png`` (per-seed curves of each implementation side by side, then both
means ± sd overlaid) and every number to ``<out>/summary.json``.

Run from the repository root (803 s for online_vowel, online_task and dpo on the shared 2-core CPU;
finished runs are reused)::

    OMP_NUM_THREADS=1 python benchmarks/learning_reference/compare.py
    python benchmarks/learning_reference/compare.py --parts dpo --seeds 1 2 3 4 5 6
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference.py"
# online part -> (judge, reference sampler, the part whose nemo-rpo runs it uses)
ONLINE_PARTS = {
    "online_vowel": ("toy_judges:vowel_fraction", "multinomial", "online_vowel"),
    "online_task": ("nemo_rpo.rewards.judges:synthetic_task_reward", "multinomial", "online_task"),
    # the same nemo-rpo runs as online_vowel; the reference draws nemo-rpo's random stream (paired seeds)
    "online_vowel_coupled": ("toy_judges:vowel_fraction", "coupled", "online_vowel"),
}
PARTS = (*ONLINE_PARTS, "dpo")
GROUPS = ("nemo-rpo", "reference")
LAST = 10  # steps averaged at the end of a run

# Every hyper-parameter both sides use, passed explicitly to both: nemo-rpo's defaults (and the
# mode=online preset) may change under the comparison, these may not.
OPTIM = {"lr": 3e-3, "min_lr": 0.0, "warmup": 5, "decay": "cosine", "clip": 1.0, "batch": 32, "beta": 0.1}
ONLINE = {**OPTIM, "k": 4, "eta": 1.0, "max_new_tokens": 12}


def nemo_settings(settings: dict) -> list[str]:
    """``settings`` as nemo-rpo overrides (Adam betas/eps, no weight decay and plain sampling pinned too)."""
    out = [f"optim.lr={settings['lr']}", f"optim.min_lr={settings['min_lr']}",
           f"optim.warmup_steps={settings['warmup']}", f"optim.decay_style={settings['decay']}",
           f"optim.clip_grad={settings['clip']}", "optim.weight_decay=0.0", "optim.adam_beta1=0.9",
           "optim.adam_beta2=0.999", "optim.adam_eps=1e-8", f"trainer.global_batch_size={settings['batch']}",
           "trainer.micro_batch_size=8", f"loss.beta={settings['beta']}"]  # fmt: skip
    if "k" in settings:
        out += [f"k={settings['k']}", f"loss.eta={settings['eta']}", f"generation.max_new_tokens={settings['max_new_tokens']}",
                "generation.temperature=1.0", "generation.top_k=0", "generation.top_p=1.0"]  # fmt: skip
    return out


def reference_settings(settings: dict) -> list[str]:
    """``settings`` as ``reference.py`` options."""
    return [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]


@dataclass
class Job:
    name: str
    argv: list[str]
    done: Path  # exists once the job has finished
    log: Path
    after: list[list[str]] = field(default_factory=list)  # commands run in sequence after argv


def env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "tests" / "functional"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_jobs(jobs: list[Job], parallel: int) -> None:
    """Run the jobs whose ``done`` file is missing, ``parallel`` at a time; fail loudly with the log tail."""
    todo = list({j.done: j for j in jobs if not j.done.exists()}.values())  # parts may share runs
    running: list[tuple[Job, subprocess.Popen, float, list[list[str]]]] = []
    while todo or running:
        while todo and len(running) < parallel:
            job = todo.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            print(f"  start {job.name}", flush=True)
            running.append((job, _spawn(job.argv, job.log), time.perf_counter(), list(job.after)))
        time.sleep(0.5)
        for entry in list(running):
            job, proc, started, rest = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            if proc.returncode != 0:
                tail = job.log.read_text()[-3000:]
                raise RuntimeError(f"{job.name} failed (exit {proc.returncode}); log {job.log}:\n{tail}")
            if rest:  # the job's next command
                running.append((job, _spawn(rest[0], job.log, append=True), started, rest[1:]))
                continue
            print(f"  done  {job.name} ({time.perf_counter() - started:.0f} s)", flush=True)


def _spawn(argv: list[str], log: Path, append: bool = False) -> subprocess.Popen:
    handle = log.open("a" if append else "w")
    return subprocess.Popen(argv, cwd=ROOT, env=env(), stdout=handle, stderr=subprocess.STDOUT)


def nemo_train(*overrides: str) -> list[str]:
    quiet = ["logging.progress_bar=false", "logging.tensorboard=false", "trainer.num_threads=1"]
    return [sys.executable, "-m", "nemo_rpo.train", *overrides, *quiet]


def convert(ckpt: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "nemo_rpo.cli.convert",
        "mcore-to-hf",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
    ]


def evaluate(hf: Path, out: Path) -> list[str]:
    return [sys.executable, str(REFERENCE), "evaluate", "--hf", str(hf), "--out", str(out)]


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------


def setup(work: Path, sft_steps: int) -> tuple[Path, Path]:
    """The shared start: nemo-rpo SFT on the online warm-up's data, exported to HF."""
    sft, hf = work / "sft", work / "sft_hf"
    data = work / "sft_k2.jsonl"
    if not data.exists():
        from nemo_rpo.data.jsonl import write_jsonl
        from nemo_rpo.data.synthetic import make_synthetic_preferences

        write_jsonl(make_synthetic_preferences(512, 2, seed=1), data)  # the warm-up's data (online.py)
    sft_settings = {**OPTIM, "warmup": 0, "decay": "constant"}  # the online warm-up's schedule
    job = Job("sft", nemo_train("loss=sft", "k=2", f"data.train_path={data}", f"trainer.max_steps={sft_steps}",
                                *nemo_settings(sft_settings), f"exp_dir={sft}"),
              done=hf / "model.safetensors", log=work / "logs" / "sft.log", after=[convert(sft, hf)])  # fmt: skip
    if not job.done.exists() and sft.exists():
        shutil.rmtree(sft)
    run_jobs([job], 1)
    return sft, hf


def online_jobs(part: str, work: Path, sft: Path, hf: Path, seeds: list[int], steps: int) -> list[Job]:
    judge, sampler, nemo_part = ONLINE_PARTS[part]
    jobs = []
    for seed in seeds:
        exp = work / nemo_part / "nemo-rpo" / f"seed{seed}"
        if exp.exists() and not (exp / "done").exists():
            shutil.rmtree(exp)  # an interrupted run: start over
        nemo = nemo_train("mode=online", "loss=rpo_sqloo", *nemo_settings(ONLINE), f"checkpoint.init_from={sft}",
                          "online.sft_warmup_steps=0", f"trainer.max_steps={steps}", f"trainer.seed={seed}",
                          f"reward.judge={judge}", f"exp_dir={exp}")  # fmt: skip
        jobs.append(Job(f"{nemo_part} nemo-rpo seed {seed}", nemo, exp / "done",
                        work / "logs" / f"{nemo_part}_nemo_{seed}.log", after=[["touch", str(exp / "done")]]))  # fmt: skip
        out = work / part / "reference" / f"seed{seed}.jsonl"
        ref = [sys.executable, str(REFERENCE), "online", "--hf", str(hf), "--seed", str(seed), "--steps", str(steps),
               *reference_settings(ONLINE), "--judge", judge, "--sampler", sampler, "--out", str(out) + ".tmp"]  # fmt: skip
        jobs.append(Job(f"{part} reference seed {seed}", ref, out, work / "logs" / f"{part}_ref_{seed}.log",
                        after=[["mv", str(out) + ".tmp", str(out)]]))  # fmt: skip
    return jobs


def dpo_jobs(work: Path, sft: Path, hf: Path, data: Path, seeds: list[int], steps: int) -> list[Job]:
    jobs = []
    for seed in seeds:
        exp = work / "dpo" / "nemo-rpo" / f"seed{seed}"
        ev = exp / "eval.json"
        if exp.exists() and not ev.exists():
            shutil.rmtree(exp)
        nemo = nemo_train("mode=offline", "loss=dpo", *nemo_settings(OPTIM), f"data.train_path={data}",
                          f"checkpoint.init_from={sft}", f"trainer.max_steps={steps}", f"trainer.seed={seed}",
                          f"exp_dir={exp}")  # fmt: skip
        jobs.append(Job(f"dpo nemo-rpo seed {seed}", nemo, ev, work / "logs" / f"dpo_nemo_{seed}.log",
                        after=[convert(exp, exp / "hf"), evaluate(exp / "hf", ev)]))  # fmt: skip
        folder = work / "dpo" / "reference" / f"seed{seed}"
        ref = [sys.executable, str(REFERENCE), "dpo", "--hf", str(hf), "--data", str(data), "--seed", str(seed),
               "--steps", str(steps), *reference_settings(OPTIM), "--out", str(folder / "metrics.jsonl"),
               "--save", str(folder / "hf")]  # fmt: skip
        jobs.append(Job(f"dpo reference seed {seed}", ref, folder / "eval.json", work / "logs" / f"dpo_ref_{seed}.log",
                        after=[evaluate(folder / "hf", folder / "eval.json")]))  # fmt: skip
    return jobs


# --------------------------------------------------------------------------------------------------
# statistics, report, plots
# --------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves(part: str, work: Path, seeds: list[int]) -> dict[str, list[list[dict]]]:
    """Per group, one list of per-step rows per seed."""
    if part == "dpo":
        paths = {
            "nemo-rpo": "dpo/nemo-rpo/seed{s}/metrics.jsonl",
            "reference": "dpo/reference/seed{s}/metrics.jsonl",
        }
    else:
        paths = {
            "nemo-rpo": ONLINE_PARTS[part][2] + "/nemo-rpo/seed{s}/metrics.jsonl",
            "reference": part + "/reference/seed{s}.jsonl",
        }
    return {g: [read_jsonl(work / paths[g].format(s=s)) for s in seeds] for g in GROUPS}


def agreement(a: list[float], b: list[float]) -> dict:
    """Mean ± sd per group, the difference, its standard error and the two-standard-error verdict."""
    ma, mb = statistics.mean(a), statistics.mean(b)
    sa, sb = statistics.stdev(a), statistics.stdev(b)
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    diff = ma - mb
    return {"nemo-rpo": a, "reference": b, "mean": [ma, mb], "sd": [sa, sb], "diff": diff, "se": se,
            "z": diff / se if se > 0 else float("inf"), "agree": abs(diff) < 2 * se}  # fmt: skip


def paired(differences: list[float]) -> dict:
    """Mean ± sd of per-seed differences (descriptive: a seed whose samples stayed identical contributes
    an exact 0, so no test is made on them)."""
    return {
        "differences": differences,
        "mean": statistics.mean(differences),
        "sd": statistics.stdev(differences),
    }


def _identical_prefix(a: list[dict], b: list[dict]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if abs(x["reward"] - y["reward"]) > 1e-6), len(a))


def last_mean(rows: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in rows[-LAST:])


def summarize(part: str, work: Path, seeds: list[int]) -> dict:
    runs = curves(part, work, seeds)
    keys = ("reward", "kl") if part != "dpo" else ("loss", "accuracy")
    stats = {f"{key} (mean of last {LAST} steps)": agreement(*[[last_mean(r, key) for r in runs[g]] for g in GROUPS])
             for key in keys}  # fmt: skip
    if ONLINE_PARTS.get(part, (None, None))[1] == "coupled":
        # Same prompts and the same random stream per seed: the per-seed difference is paired.
        stats["paired reward difference (nemo-rpo - reference, last 10 steps)"] = paired(
            [
                last_mean(a, "reward") - last_mean(b, "reward")
                for a, b in zip(runs["nemo-rpo"], runs["reference"])
            ]
        )
        stats["steps with identical samples (same mean reward to 1e-6), from step 1"] = {
            f"seed {seed}": float(_identical_prefix(a, b))
            for seed, a, b in zip(seeds, runs["nemo-rpo"], runs["reference"])
        }
    if part == "dpo":
        evals = {
            g: [json.loads((work / "dpo" / g / f"seed{s}" / "eval.json").read_text()) for s in seeds]
            for g in GROUPS
        }
        for key in ("eval_reward_greedy", "eval_reward_sampled"):
            stats[f"{key} (final policy, 256 held-out prompts)"] = agreement(
                *[[e[key] for e in evals[g]] for g in GROUPS]
            )
        # Same data order per seed: the step-by-step loss difference of the paired runs.
        deltas = [
            [abs(x["loss"] - y["loss"]) for x, y in zip(a, b)]
            for a, b in zip(runs["nemo-rpo"], runs["reference"])
        ]
        stats["paired |loss difference|"] = {
            "steps 1-5, max over seeds": max(max(d[:5]) for d in deltas),
            "all steps, mean over seeds": statistics.mean(statistics.mean(d) for d in deltas),
        }
    return {"part": part, "seeds": seeds, "stats": stats, "runs": runs}


def print_summary(summary: dict) -> None:
    print(f"\n== {summary['part']} ({len(summary['seeds'])} seeds per group) ==")
    for name, s in summary["stats"].items():
        if "differences" in s:
            print(f"  {name}: {s['mean']:+.4f} ± {s['sd']:.4f} (per seed: "
                  + " ".join(f"{v:+.4f}" for v in s["differences"]) + ")")  # fmt: skip
            continue
        if "agree" not in s:
            print(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in s.items()))
            continue
        (ma, mb), (sa, sb) = s["mean"], s["sd"]
        verdict = "AGREE" if s["agree"] else "DISAGREE"
        print(f"  {name}:")
        for g, values, m, sd in zip(GROUPS, (s["nemo-rpo"], s["reference"]), (ma, mb), (sa, sb)):
            print(f"    {g:9s} {m:.4f} ± {sd:.4f}   per seed: " + " ".join(f"{v:.4f}" for v in values))
        print(f"    difference {s['diff']:+.4f}, 2 x se = {2 * s['se']:.4f} (z = {s['z']:+.2f}) -> {verdict}")
    key = "reward" if summary["part"] != "dpo" else "loss"
    print(f"  mean {key} curve (every 5 steps; nemo-rpo | reference):")
    for step in range(0, len(summary["runs"]["nemo-rpo"][0]), 5):
        cells = []
        for g in GROUPS:
            values = [rows[step][key] for rows in summary["runs"][g]]
            cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
        print(f"    step {step + 1:3d}: " + " | ".join(cells))


def plot(summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("reward", "kl") if summary["part"] != "dpo" else ("loss", "accuracy")
    colors = {"nemo-rpo": "tab:blue", "reference": "tab:orange"}
    paired = summary["part"] == "dpo"  # same data order per seed: a row of step-by-step differences
    fig, axes = plt.subplots(len(keys) + paired, 3, figsize=(15, 4 * (len(keys) + paired)), squeeze=False)
    if paired:
        ax = axes[-1][0]
        for seed, a, b in zip(summary["seeds"], summary["runs"]["nemo-rpo"], summary["runs"]["reference"]):
            ax.semilogy([r["step"] for r in a], [max(abs(x["loss"] - y["loss"]), 1e-9) for x, y in zip(a, b)],
                        lw=0.8, label=f"seed {seed}")  # fmt: skip
        ax.set_title("|loss nemo-rpo - loss reference|, same seed (floor 1e-9)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        for spare in axes[-1][1:]:
            spare.axis("off")
    for row, key in zip(axes, keys):
        for ax, g in zip(row[:2], GROUPS):
            for seed, rows in zip(summary["seeds"], summary["runs"][g]):
                ax.plot(
                    [r["step"] for r in rows], [r[key] for r in rows], lw=0.8, alpha=0.6, label=f"seed {seed}"
                )
            ax.set_title(f"{g}: {key} per seed")
        for g in GROUPS:
            runs = summary["runs"][g]
            steps = [r["step"] for r in runs[0]]
            mean = [statistics.mean(rows[i][key] for rows in runs) for i in range(len(steps))]
            sd = [statistics.stdev(rows[i][key] for rows in runs) for i in range(len(steps))]
            row[2].plot(steps, mean, color=colors[g], label=f"{g} (mean ± sd, {len(runs)} seeds)")
            row[2].fill_between(steps, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                                color=colors[g], alpha=0.2)  # fmt: skip
        row[2].set_title(f"{key}: both")
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
        row[2].legend(fontsize=8)
    fig.suptitle(f"learning reference: {summary['part']}")
    fig.tight_layout()
    path = out / f"{summary['part']}.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "learning_reference")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--online-steps", type=int, default=40)
    parser.add_argument("--dpo-steps", type=int, default=48)
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one thread each)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()}; work dir {args.work}", flush=True)
    sft, hf = setup(args.work, args.sft_steps)
    from nemo_rpo.data.synthetic import default_train_path

    data = default_train_path(2)
    jobs = []
    for part in args.parts:
        if part == "dpo":
            jobs += dpo_jobs(args.work, sft, hf, data, args.seeds, args.dpo_steps)
        else:
            jobs += online_jobs(part, args.work, sft, hf, args.seeds, args.online_steps)
    run_jobs(jobs, args.parallel)
    path = args.out / "summary.json"  # parts run by earlier commands into the same folder are kept
    results = json.loads(path.read_text()) if path.exists() else {"parts": {}}
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    settings = {k: _shown(v) for k, v in vars(args).items()}
    for part in args.parts:
        summary = summarize(part, args.work, args.seeds)
        print_summary(summary)
        print(f"  plot: {plot(summary, args.out)}")
        results["parts"][part] = {"cpu": cpu_model(), "command": command, "settings": settings,
                                  "hyper_parameters": ONLINE if part != "dpo" else OPTIM, "seeds": args.seeds,
                                  "stats": summary["stats"], "mean_curves": _mean_curves(summary)}  # fmt: skip
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nsummary: {path} ({time.perf_counter() - started:.0f} s)")


def _shown(value) -> str:  # noqa: ANN001
    """A setting as text; paths relative to the repository root."""
    if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
        return str(value.resolve().relative_to(ROOT))
    return str(value)


def _mean_curves(summary: dict) -> dict:
    keys = ("reward", "kl") if summary["part"] != "dpo" else ("loss", "accuracy")
    out = {}
    for g in GROUPS:
        runs = summary["runs"][g]
        out[g] = {
            k: [round(statistics.mean(rows[i][k] for rows in runs), 5) for i in range(len(runs[0]))]
            for k in keys
        }
    return out


if __name__ == "__main__":
    main()
