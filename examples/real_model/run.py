"""RPO on a real instruct model, on CPU: SmolLM2-135M-Instruct, MT-Bench prompts, a MiniLM similarity judge.

Run ``bash examples/real_model/setup.sh`` first (installs and prepares the assets), then

    python examples/real_model/run.py [WORK_DIR]          # default runs/real_model

Stages (each skipped when its output exists, so a rerun resumes):
  1. ``prefs.jsonl``: K=4 samples (temperature 0.8) per train prompt from SmolLM2, scored by the judge
     (``judge.py``: cosine similarity to MT-Bench's GPT-4 reference answer, in [-1, 1]).
  2. ``offline/``: offline RPO (rpo_bwd, K=4) on that data, started with ``model.init_from_hf``.
  3. ``online/``: online RPO (rpo_bwd, K=4): each step samples from the policy and asks the judge.
  4. ``results.json``: the start model, the offline and the online policy, each generating for the held-out
     (test) prompts greedily and with 4 samples at temperature 0.8, and for the train prompts greedily; the
     judge's average reward and the win-rate vs the start model (ties count half; a sample is compared with
     the start model's sample of the same index), with 95% CIs over prompts (samples).

Training stages use the ``nemo-rpo-train`` CLI (``python -m nemo_rpo.train``), as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
K = 4
MAX_NEW_TOKENS = 80
TEMPERATURE = 0.8
COMMON = [
    "loss=rpo_bwd", "loss.beta=0.1", "loss.eta=10", f"k={K}", "model.max_seq_len=512", "data.max_prompt_len=256",
    "optim.lr=2e-5", "optim.warmup_steps=1", "optim.decay_style=constant", "trainer.global_batch_size=4",
    "trainer.micro_batch_size=2", "logging.progress_bar=false", "trainer.seed=1",
]  # fmt: skip
OFFLINE = ["trainer.max_steps=10"]
ONLINE = ["mode=online", "trainer.max_steps=5", f"generation.max_new_tokens={MAX_NEW_TOKENS}",
          f"generation.temperature={TEMPERATURE}", "reward.kind=judge", "reward.judge=judge:score"]  # fmt: skip


def _env(work: Path) -> dict:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "NEMO_RPO_REAL_MODEL_DIR": str(work), "OMP_NUM_THREADS": "2"}


def _policy(work: Path, run_dir: Path | None):
    """A one-process Megatron model with the start (HF) weights or a run's latest checkpoint."""
    from nemo_rpo.config.schema import ModelConfig, ParallelConfig
    from nemo_rpo.distributed.launch import init_distributed
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.models.hf_io import load_hf_weights_, read_hf_config, read_hf_state
    from nemo_rpo.models.hf_mapping import model_fields_from_hf
    from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint

    hf_dir = work / "smollm2"
    cfg = ModelConfig(
        **model_fields_from_hf(read_hf_config(hf_dir)), max_seq_len=512, transformer_impl="local"
    )
    init_distributed(ParallelConfig(), seed=0)
    model = build_gpt_model(cfg, ParallelConfig(), cfg.vocab_size).eval()
    if run_dir is None:
        load_hf_weights_(model, read_hf_state(hf_dir), cfg)
    else:
        load_checkpoint(find_latest_checkpoint(run_dir), model, None, None, restore_rng=False)
    return model


def _generate(model, tokenizer, prompts, *, samples: int, temperature: float, seed: int) -> list[str]:
    from nemo_rpo.config.schema import GenerationConfig
    from nemo_rpo.generation import MegatronGenerator, sampling_generator

    gen = MegatronGenerator(model, GenerationConfig(temperature=temperature, max_new_tokens=MAX_NEW_TOKENS),
                            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, vocab_size=tokenizer.vocab_size)  # fmt: skip
    out = gen.generate([p.ids for p in prompts], samples, sampling_generator(seed, 0))
    return [tokenizer.decode(ids) for ids in out.response_ids()]


def build_preferences(work: Path) -> dict:
    """Stage 1: K samples per train prompt from the start model, scored by the judge."""
    path = work / "prefs.jsonl"
    stats_path = work / "prefs_stats.json"
    if stats_path.is_file():
        return json.loads(stats_path.read_text())
    import judge

    from nemo_rpo.data.prompts import load_prompts
    from nemo_rpo.data.tokenizer import HFTokenizer

    tokenizer = HFTokenizer(str(work / "smollm2"))
    rows = [json.loads(line) for line in (work / "prompts" / "train.jsonl").read_text().splitlines()]
    prompts = load_prompts(work / "prompts" / "train.jsonl", tokenizer, max_prompt_len=256)
    model = _policy(work, None)
    texts = _generate(model, tokenizer, prompts, samples=K, temperature=TEMPERATURE, seed=0)
    rewards = judge.score([p.text for p in prompts for _ in range(K)], texts)
    kept = []
    for i, row in enumerate(rows):
        resp, rew = texts[i * K : (i + 1) * K], rewards[i * K : (i + 1) * K]
        if max(rew) > min(rew):  # a prompt whose samples tie carries no preference
            kept.append({"prompt": row["prompt"], "responses": resp, "rewards": rew})
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    stats = {"prompts": len(rows), "kept": len(kept), "sample_reward_mean": sum(rewards) / len(rewards),
             "sample_reward_min": min(rewards), "sample_reward_max": max(rewards)}  # fmt: skip
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


def train(work: Path, name: str, extra: list[str]) -> float:
    """Stages 2-3: one ``nemo-rpo-train`` run; returns its wall time (0 when it had finished before)."""
    exp = work / name
    if (exp / "done").is_file():
        return float((exp / "done").read_text())
    args = [f"model.init_from_hf={work / 'smollm2'}", f"exp_dir={exp}", *COMMON, *extra]
    started = time.perf_counter()
    print(f"+ nemo-rpo-train {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "nemo_rpo.train", *args], check=True, env=_env(work))
    seconds = time.perf_counter() - started
    (exp / "done").write_text(f"{seconds:.1f}")
    return seconds


def evaluate(work: Path) -> dict:
    """Stage 4: judge the start, offline and online policies on the test and train prompts."""
    import judge

    from nemo_rpo.data.prompts import load_prompts
    from nemo_rpo.data.tokenizer import HFTokenizer
    from nemo_rpo.testbed.stats import mean_ci, win_rates

    tokenizer = HFTokenizer(str(work / "smollm2"))
    sets = {name: load_prompts(work / "prompts" / f"{name}.jsonl", tokenizer, max_prompt_len=256)
            for name in ("test", "train")}  # fmt: skip
    # Sampled generations on the held-out prompts only: CPU time goes where the question is.
    plan = [("test", "greedy", 1, 0.0), ("test", "sampled", 4, TEMPERATURE), ("train", "greedy", 1, 0.0)]
    rewards: dict[str, dict[str, list[float]]] = {}
    examples: dict[str, str] = {}
    for policy, run_dir in (("start", None), ("offline", work / "offline"), ("online", work / "online")):
        model = _policy(work, run_dir)
        for set_name, mode, samples, temperature in plan:
            prompts = sets[set_name]
            texts = _generate(model, tokenizer, prompts, samples=samples, temperature=temperature, seed=7)
            key = f"{set_name}/{mode}"
            rewards.setdefault(policy, {})[key] = judge.score(
                [p.text for p in prompts for _ in range(samples)], texts
            )
            if key == "test/greedy":
                examples[policy] = texts[0]
    results: dict = {
        "rewards": rewards,
        "example_test_prompt_0": {"prompt": sets["test"][0].text, **examples},
    }
    table = {}
    for policy in rewards:
        for key, scores in rewards[policy].items():
            row = {"reward": mean_ci(scores), "n": len(scores)}
            if policy != "start":
                row["win_rate"] = mean_ci(win_rates(scores, rewards["start"][key]))
            table[f"{policy} {key}"] = row
    results["table"] = table
    return results


def format_table(results: dict) -> str:
    lines = [
        f"{'policy':8} {'prompts/decoding':16} {'n':>3} | {'judge reward (95% CI)':>24} | {'win-rate vs start %':>22}"
    ]
    for name, row in results["table"].items():
        policy, key = name.split(" ")
        r = row["reward"]
        reward = f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
        win = ""
        if "win_rate" in row:
            w = row["win_rate"]
            win = f"{100 * w['mean']:.1f} [{100 * w['lo']:.1f}, {100 * w['hi']:.1f}]"
        lines.append(f"{policy:8} {key:16} {row['n']:>3} | {reward:>24} | {win:>22}")
    return "\n".join(lines)


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/real_model").resolve()
    if not (work / "smollm2" / "config.json").is_file():
        sys.exit(f"error: {work}/smollm2 missing; run: bash examples/real_model/setup.sh {work}")
    sys.path.insert(0, str(HERE))
    os.environ.update({k: v for k, v in _env(work).items() if k == "NEMO_RPO_REAL_MODEL_DIR"})
    started = time.perf_counter()
    timings = {}
    tick = time.perf_counter()
    stats = build_preferences(work)
    timings["preferences_s"] = time.perf_counter() - tick
    print(f"preferences: {stats}", flush=True)
    timings["offline_s"] = train(work, "offline", [f"data.train_path={work / 'prefs.jsonl'}", *OFFLINE])
    timings["online_s"] = train(
        work, "online", [f"data.prompts_path={work / 'prompts' / 'train.jsonl'}", *ONLINE]
    )
    tick = time.perf_counter()
    results = evaluate(work)
    timings["evaluation_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    results.update(preferences=stats, timings=timings)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"timings (s): {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


if __name__ == "__main__":
    main()
