"""The ground-truth-judge testbed (§4.1): SFT → judged preference data → learnt RM → the grid → evaluation.

Every stage is one of the package's own training functions run in-process on a config built here,
with its own ``exp_dir`` under the testbed's (``sft/``, ``rm/``, ``runs/<method>/seed<s>/``), so a rerun
skips what is finished: a finished stage leaves its checkpoints, a finished run its ``eval.json``.
One process group serves every stage (``init_distributed`` keeps it and rebuilds megatron's groups).

Departures from the paper, for scale: one SFT policy, preference dataset and learnt RM serve every
seed (seeds vary the data order and the sampling, as in Appendix F's "randomly shuffled data");
iterative runs are evaluated at the end of each iteration, without selection inside an iteration.

Launch: ``nemo-rpo-testbed`` (the full grid, 3 seeds) or ``nemo-rpo-testbed quick=true`` (CI, one
process on CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import random
import time
from pathlib import Path

from nemo_rpo.config.rm_schema import RMTrainConfig
from nemo_rpo.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    GenerationConfig,
    LoggingConfig,
    LossConfig,
    OnlineConfig,
    OptimConfig,
    ParallelConfig,
    RewardConfig,
    RPOConfig,
    ScheduleConfig,
    TrainerConfig,
)  # fmt: skip
from nemo_rpo.config.testbed_schema import TestbedConfig, TunedConfig
from nemo_rpo.data.jsonl import write_jsonl
from nemo_rpo.data.prompts import prompts_from_texts
from nemo_rpo.data.tokenizer import build_tokenizer
from nemo_rpo.distributed.launch import configure_cpu, init_distributed, teardown_distributed
from nemo_rpo.testbed.methods import MethodSpec, method_spec
from nemo_rpo.testbed.report import aggregate, findings, format_findings, format_table, write_plots
from nemo_rpo.testbed.tasks import JUDGE, demonstrations, make_splits
from nemo_rpo.training.checkpoint import find_latest_checkpoint

__all__ = ["method_hparams", "run_search", "run_testbed"]

PREF_SAMPLES = 4  # K samples per preference prompt; the K=2 data pairs the best with a random other
KEEP_ALL = 10_000  # checkpoints kept per run: every one is a candidate for selection


def run_testbed(cfg: TestbedConfig) -> dict:
    """Run every stage that is not finished yet; write ``results.json``, the table and the plots."""
    started = time.perf_counter()
    configure_cpu(cfg.num_threads, cfg.keep_freed_memory, cfg.deterministic)
    info = init_distributed(ParallelConfig(), cfg.data_seed)
    if info.world_size != 1:
        raise ConfigError("nemo-rpo-testbed runs in one process (launch it without torchrun)")
    try:
        root, scale = Path(cfg.exp_dir), cfg.scale
        tokenizer = build_tokenizer(DataConfig().tokenizer)
        data = _write_splits(cfg, root)
        sft_dir = _stage(root / "sft", lambda d: _train_sft(cfg, d, data["sft"]))
        prefs = _build_preferences(cfg, root, tokenizer, sft_dir, data["pref"])
        rm_dir = None
        if any(method_spec(m, scale.iterations).rm == "learnt" for m in scale.methods):
            rm_dir = _stage(root / "rm", lambda d: _train_rm(cfg, d, prefs["k4"]))
        sets = {name: prompts_from_texts(_texts(data[name]), tokenizer, max_prompt_len=96)
                for name in ("valid", "test", "ood")}  # fmt: skip
        baseline = _evaluate_sft(cfg, root, tokenizer, sft_dir, sets)
        if cfg.search:
            return run_search(cfg, root, data, prefs, sft_dir, rm_dir, tokenizer, sets, baseline)
        evals: dict[str, list[dict]] = {}
        for name in scale.methods:
            spec = method_spec(name, scale.iterations)
            for seed in scale.seeds:
                run_dir = root / "runs" / name / f"seed{seed}"
                evals.setdefault(name, []).append(
                    _run_and_evaluate(cfg, spec, seed, run_dir, data, prefs, sft_dir, rm_dir, tokenizer, sets, baseline)
                )  # fmt: skip
        results = aggregate(cfg, baseline, evals, prefs["stats"])
        results["wall_time_s"] = time.perf_counter() - started
        results["findings"] = findings(results)
        (root / "results.json").write_text(json.dumps(results, indent=2))
        print(format_table(results), flush=True)
        print(format_findings(results["findings"]), flush=True)
        for path in write_plots(results, root):
            print(f"plot: {path}", flush=True)
        print(f"results: {root / 'results.json'} ({results['wall_time_s']:.0f} s)", flush=True)
        return results
    finally:
        teardown_distributed()


def search_candidates(cfg: TestbedConfig, spec: MethodSpec) -> list[dict[str, float]]:
    """Appendix F's grid for one method: lr x beta, and eta for rpo_bwd (rpo_sqloo fixes eta=1, as the paper)."""
    keys = ["lr", "beta"] + (["eta"] if spec.loss.endswith("bwd") else [])  # rpo_bwd, rpo_token_bwd
    return [dict(zip(keys, values)) for values in itertools.product(*(cfg.search_space[k] for k in keys))]


def run_search(cfg: TestbedConfig, root: Path, data: dict, prefs: dict, sft_dir: Path, rm_dir: Path | None,
               tokenizer, sets: dict, baseline: dict) -> dict:  # fmt: skip
    """Train every candidate of every one-iteration method with the first seed; keep the best on valid.

    Only the valid split is generated and scored (selection never sees test or OOD). A candidate's score
    is its best checkpoint's valid reward, step 0 (SFT) included; ties go to the earlier candidate.
    Writes ``search.json`` (every candidate's score, the chosen values) and prints the ``tuned`` block.
    """
    seed, valid = cfg.scale.seeds[0], {"valid": sets["valid"]}
    out: dict = {"seed": seed, "space": dict(cfg.search_space), "candidates": {}, "tuned": {}}
    for name in cfg.scale.methods:
        spec = method_spec(name, cfg.scale.iterations)
        if spec.iterations > 1:
            continue  # iterative runs use their one-iteration method's values (method_hparams)
        rows = []
        for cand in search_candidates(cfg, spec):
            tag = "_".join(f"{k}{v:g}" for k, v in cand.items())
            trial = dataclasses.replace(cfg, tuned={**cfg.tuned, name: TunedConfig(**cand)})
            run_dir = root / "search" / name / tag / f"seed{seed}"
            result = _run_and_evaluate(trial, spec, seed, run_dir, data, prefs, sft_dir, rm_dir,
                                       tokenizer, valid, baseline)  # fmt: skip
            best = max(result["curve"], key=lambda p: p["valid_reward"])
            rows.append({**cand, "valid_reward": best["valid_reward"], "step": best["step"]})
            print(f"search {name} {tag}: valid {best['valid_reward']:.4f} at step {best['step']}", flush=True)
        win = max(rows, key=lambda r: r["valid_reward"])
        out["candidates"][name] = rows
        out["tuned"][name] = {k: win[k] for k in rows[0] if k not in ("valid_reward", "step")}
    (root / "search.json").write_text(json.dumps(out, indent=2))
    print("tuned:  # chosen on valid, seed", seed, "(committed in testbed_schema._tuned)", flush=True)
    for name, values in out["tuned"].items():
        print(f"  {name}: {{{', '.join(f'{k}: {v:g}' for k, v in values.items())}}}", flush=True)
    print(f"search: {root / 'search.json'}", flush=True)
    return out


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def _write_splits(cfg: TestbedConfig, root: Path) -> dict[str, Path]:
    s = cfg.scale
    splits = make_splits(num_sft=s.num_sft_prompts, num_pref=s.num_pref_prompts, num_valid=s.num_valid,
                         num_test=s.num_test, num_ood=s.num_ood, seed=cfg.data_seed)  # fmt: skip
    folder = root / "data"
    paths = {"sft": folder / "sft.jsonl"}
    write_jsonl(demonstrations(splits.sft, cfg.sft_demos, cfg.data_seed), paths["sft"])
    for name in ("pref", "valid", "test", "ood"):
        paths[name] = write_jsonl(
            [{"prompt": p} for p in getattr(splits, name)], folder / f"{name}_prompts.jsonl"
        )
    return paths


def _stage(exp_dir: Path, train) -> Path:
    """Run ``train(exp_dir)`` unless it finished before (its ``DONE`` marker exists)."""
    if not (exp_dir / "DONE").is_file():
        train(exp_dir)
        (exp_dir / "DONE").write_text("")
    return exp_dir


def _rpo_config(cfg: TestbedConfig, exp_dir: Path, *, mode: str, loss, k: int, seed: int, steps: int,
                lr: float, batch_size: int, save_interval: int, train_path=None, prompts_path=None,
                init_from=None, reward: RewardConfig | None = None, iterations: int = 1) -> RPOConfig:  # fmt: skip
    return RPOConfig(
        mode=mode,
        k=k,
        exp_dir=str(exp_dir),
        loss=copy.deepcopy(loss),
        model=copy.deepcopy(cfg.model),
        data=DataConfig(
            train_path=None if train_path is None else str(train_path),
            prompts_path=None if prompts_path is None else str(prompts_path),
        ),  # fmt: skip
        optim=OptimConfig(lr=lr, min_lr=lr, warmup_steps=0, decay_style="constant"),  # constant, as in §F
        trainer=TrainerConfig(
            max_steps=steps,
            global_batch_size=batch_size,
            micro_batch_size=cfg.micro_batch_size,
            log_interval=1 if mode == "online" else max(1, steps // 4),
            seed=seed,
            num_threads=cfg.num_threads,
            keep_freed_memory=cfg.keep_freed_memory,
            deterministic=cfg.deterministic,
        ),  # fmt: skip
        checkpoint=CheckpointConfig(
            save_interval=save_interval,
            keep_last=KEEP_ALL,
            init_from=None if init_from is None else str(init_from),
        ),  # fmt: skip
        logging=LoggingConfig(tensorboard=False, progress_bar=False),
        generation=GenerationConfig(temperature=cfg.sample_temperature, max_new_tokens=cfg.max_new_tokens),
        reward=reward or RewardConfig(kind="judge", judge=JUDGE),
        schedule=ScheduleConfig(iterations=iterations),
        online=OnlineConfig(sft_warmup_steps=0),
    )


def _train_sft(cfg: TestbedConfig, exp_dir: Path, data: Path) -> None:
    from nemo_rpo.algorithms.offline import train_offline

    steps = cfg.scale.sft_steps
    train_offline(_rpo_config(cfg, exp_dir, mode="offline", loss=LossConfig(name="sft"), k=1, seed=cfg.data_seed,
                              steps=steps, lr=cfg.sft_lr, batch_size=cfg.batch_size, save_interval=steps,
                              train_path=data))  # fmt: skip


def _train_rm(cfg: TestbedConfig, exp_dir: Path, data: Path) -> None:
    from nemo_rpo.algorithms.reward_model import train_reward_model

    steps = cfg.scale.rm_steps
    rm = RMTrainConfig(
        objective="bradley_terry", k=PREF_SAMPLES, exp_dir=str(exp_dir), model=copy.deepcopy(cfg.model),
        data=DataConfig(train_path=str(data)),
        optim=OptimConfig(lr=cfg.rm_lr, min_lr=cfg.rm_lr, warmup_steps=0, decay_style="constant"),
        trainer=TrainerConfig(max_steps=steps, global_batch_size=cfg.batch_size,
                              micro_batch_size=cfg.micro_batch_size, log_interval=max(1, steps // 4),
                              seed=cfg.data_seed, num_threads=cfg.num_threads, keep_freed_memory=cfg.keep_freed_memory,
                              deterministic=cfg.deterministic),
        checkpoint=CheckpointConfig(save_interval=steps), logging=LoggingConfig(tensorboard=False, progress_bar=False),
    )  # fmt: skip
    train_reward_model(rm)


def _build_preferences(cfg: TestbedConfig, root: Path, tokenizer, sft_dir: Path, prompts_path: Path) -> dict:
    """§4.1: K samples per prompt from the SFT policy, scored by the judge.

    ``prefs_k4.jsonl`` keeps all K; ``prefs_k2.jsonl`` pairs the highest-reward sample (chosen) with a
    random other one (rejected). Prompts with an empty sample, or whose samples all score the same (no
    preference to learn), are dropped; the K=2 data also drops pairs that tie.
    """
    folder = root / "data"
    paths = {
        "k4": folder / "prefs_k4.jsonl",
        "k2": folder / "prefs_k2.jsonl",
        "stats": folder / "prefs_stats.json",
    }
    if not paths["stats"].is_file():
        from nemo_rpo.generation import MegatronGenerator, sampling_generator
        from nemo_rpo.models.gpt import build_gpt_model
        from nemo_rpo.rewards import build_reward_model
        from nemo_rpo.training.checkpoint import load_checkpoint

        init_distributed(ParallelConfig(), cfg.data_seed)
        model = build_gpt_model(cfg.model, ParallelConfig(), tokenizer.vocab_size)
        load_checkpoint(find_latest_checkpoint(sft_dir), model, None, None, restore_rng=False)
        generator = MegatronGenerator(model, GenerationConfig(temperature=cfg.sample_temperature,
                                      max_new_tokens=cfg.max_new_tokens), eos_id=tokenizer.eos_id,
                                      pad_id=tokenizer.pad_id, vocab_size=tokenizer.vocab_size)  # fmt: skip
        judge = build_reward_model(RewardConfig(kind="judge", judge=JUDGE))
        prompts = prompts_from_texts(_texts(prompts_path), tokenizer, max_prompt_len=96)
        rng, k4, k2, all_rewards = random.Random(cfg.data_seed), [], [], []
        for start in range(0, len(prompts), 128):
            chunk = prompts[start : start + 128]
            out = generator.generate(
                [p.ids for p in chunk], PREF_SAMPLES, sampling_generator(cfg.data_seed, start)
            )
            texts = [tokenizer.decode(ids) for ids in out.response_ids()]
            rewards = judge.score([p.text for p in chunk for _ in range(PREF_SAMPLES)], texts).tolist()
            for b, p in enumerate(chunk):
                row = rewards[b * PREF_SAMPLES : (b + 1) * PREF_SAMPLES]
                resp = texts[b * PREF_SAMPLES : (b + 1) * PREF_SAMPLES]
                all_rewards.extend(row)
                if any(not t.strip() for t in resp) or max(row) == min(row):
                    continue
                k4.append({"prompt": p.text, "responses": resp, "rewards": row})
                best = max(range(PREF_SAMPLES), key=row.__getitem__)
                other = rng.choice([j for j in range(PREF_SAMPLES) if j != best])
                if row[best] > row[other]:
                    k2.append({"prompt": p.text, "responses": [resp[best], resp[other]],
                               "rewards": [row[best], row[other]]})  # fmt: skip
        write_jsonl(k4, paths["k4"])
        write_jsonl(k2, paths["k2"])
        n = len(all_rewards)
        mean = sum(all_rewards) / n
        stats = {"prompts": len(prompts), "k4_prompts": len(k4), "k2_pairs": len(k2), "sample_reward_mean": mean,
                 "sample_reward_sd": (sum((r - mean) ** 2 for r in all_rewards) / n) ** 0.5,
                 "sample_reward_min": min(all_rewards), "sample_reward_max": max(all_rewards),
                 "sample_reward_frac_correct": sum(r == 1.0 for r in all_rewards) / n}  # fmt: skip
        paths["stats"].write_text(json.dumps(stats, indent=2))
        print(f"preferences: {stats}", flush=True)
    return {**paths, "stats": json.loads(paths["stats"].read_text())}


def method_hparams(cfg: TestbedConfig, spec: MethodSpec) -> tuple[LossConfig, float]:
    """The loss config and learning rate of a method: ``cfg.tuned``'s entry over the shared defaults."""
    base = spec.name.replace("iter_", "", 1) if spec.iterations > 1 else spec.name
    base = {"offline_rpo_bwd": "rpo_bwd_k4", "online_rpo_bwd": "online_rpo_bwd_gt"}.get(base, base)
    tuned = cfg.tuned[base].values() if base in cfg.tuned else {}
    loss = copy.deepcopy(cfg.losses[spec.loss])
    for key in ("beta", "eta"):
        if key in tuned:
            setattr(loss, key, float(tuned[key]))
    return loss, float(tuned.get("lr", cfg.online_lr if spec.online else cfg.offline_lr))


def _train_method(cfg: TestbedConfig, spec: MethodSpec, seed: int, run_dir: Path, data: dict, prefs: dict,
                  sft_dir: Path, rm_dir: Path | None) -> None:  # fmt: skip
    scale = cfg.scale
    loss, lr = method_hparams(cfg, spec)
    if spec.online:
        from nemo_rpo.algorithms.online import train_online as train

        reward = RewardConfig(kind="megatron", path=str(rm_dir)) if spec.rm == "learnt" else None
        steps = scale.learnt_online_steps if spec.rm == "learnt" else scale.online_steps
        interval = scale.online_save_interval
        if spec.iterations > 1:
            interval = steps
        rpo = _rpo_config(cfg, run_dir, mode="online", loss=loss, k=spec.k, seed=seed, steps=steps * spec.iterations,
                          lr=lr, batch_size=cfg.online_batch_size, save_interval=interval,
                          prompts_path=data["pref"], init_from=sft_dir, reward=reward, iterations=spec.iterations)  # fmt: skip
    else:
        from nemo_rpo.algorithms.offline import train_offline as train

        steps = scale.offline_steps
        interval = steps if spec.iterations > 1 else scale.save_interval
        rpo = _rpo_config(cfg, run_dir, mode="offline", loss=loss, k=spec.k, seed=seed, steps=steps * spec.iterations,
                          lr=lr, batch_size=cfg.batch_size, save_interval=interval,
                          train_path=prefs[f"k{spec.k}"], init_from=sft_dir, iterations=spec.iterations)  # fmt: skip
    train(rpo)


def _evaluator(cfg: TestbedConfig, tokenizer, sft_dir: Path):
    from nemo_rpo.testbed.evaluate import PolicyEvaluator

    init_distributed(ParallelConfig(), cfg.data_seed)  # fresh megatron groups for the evaluation models
    return PolicyEvaluator(cfg.model, tokenizer.vocab_size, tokenizer, find_latest_checkpoint(sft_dir),
                           max_new_tokens=cfg.max_new_tokens, eval_temperature=cfg.eval_temperature,
                           micro_batch_size=cfg.micro_batch_size)  # fmt: skip


def _score(prompts, responses: list[str]) -> list[float]:
    from nemo_rpo.rewards.judges import synthetic_task_reward

    return synthetic_task_reward([p.text for p in prompts], responses)


def _evaluate_sft(cfg: TestbedConfig, root: Path, tokenizer, sft_dir: Path, sets: dict) -> dict:
    """Per-prompt judge rewards of the SFT policy on every set (the win-rate baseline)."""
    path = root / "sft" / "eval.json"
    if not path.is_file():
        evaluator = _evaluator(cfg, tokenizer, sft_dir)
        evaluator.load(find_latest_checkpoint(sft_dir))
        responses = {name: evaluator.responses(prompts) for name, prompts in sets.items()}
        rows = {name: _score(prompts, responses[name]) for name, prompts in sets.items()}
        rows["responses"] = responses
        path.write_text(json.dumps(rows))
    return json.loads(path.read_text())


def _run_and_evaluate(cfg: TestbedConfig, spec: MethodSpec, seed: int, run_dir: Path, data: dict, prefs: dict,
                      sft_dir: Path, rm_dir: Path | None, tokenizer, sets: dict, baseline: dict) -> dict:  # fmt: skip
    """Train one (method, seed), then select its checkpoint on valid reward and score test and OOD."""
    path = run_dir / "eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"=== {spec.name} seed {seed} ===", flush=True)
    tick = time.perf_counter()
    _train_method(cfg, spec, seed, run_dir, data, prefs, sft_dir, rm_dir)
    train_s = time.perf_counter() - tick
    evaluator = _evaluator(cfg, tokenizer, sft_dir)
    learnt = None
    if spec.rm == "learnt":
        from nemo_rpo.rewards.megatron_rm import MegatronRewardModel

        learnt = MegatronRewardModel(rm_dir)
    # Step 0, the SFT policy itself, is a selection candidate like any saved checkpoint.
    # Runs against the learnt RM keep each checkpoint's per-prompt judge rewards too: Figure 4's paired test.
    curve = [{"step": 0, "checkpoint": None, "valid_reward": _mean(baseline["valid"]), "kl": 0.0}]
    if learnt is not None:
        texts = [p.text for p in sets["valid"]]
        curve[0]["valid_learnt_reward"] = _mean(learnt.score(texts, baseline["responses"]["valid"]).tolist())
        curve[0]["valid_rewards"] = list(baseline["valid"])
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*")):
        if not (ckpt / "COMPLETE").is_file():
            continue
        evaluator.load(ckpt)
        responses = evaluator.responses(sets["valid"])
        judged = _score(sets["valid"], responses)
        point = {"step": int(ckpt.name.split("_")[1]), "checkpoint": str(ckpt), "valid_reward": _mean(judged),
                 "kl": evaluator.kl_to_sft(sets["valid"], seed)}  # fmt: skip
        if learnt is not None:
            rm_scores = learnt.score([p.text for p in sets["valid"]], responses).tolist()
            point["valid_learnt_reward"] = _mean(rm_scores)
            point["valid_rewards"] = judged
        curve.append(point)
    # Appendix F: the best checkpoint by valid reward; iterative runs: the checkpoint ending each iteration.
    per_iter = spec.iterations > 1
    chosen = curve[1:] if per_iter else [max(curve, key=lambda p: p["valid_reward"])]  # ties: the earlier
    selections = []
    for point in chosen:
        if point["step"] == 0:
            selections.append({"step": 0, "kl": 0.0, **{name: {"rewards": baseline[name]} for name in sets}})
            continue
        evaluator.load(point["checkpoint"])
        sel = {"step": point["step"], "kl": point["kl"]}
        for name, prompts in sets.items():
            rewards = _score(prompts, evaluator.responses(prompts))
            sel[name] = {"rewards": rewards}
        selections.append(sel)
    result = {"method": spec.name, "seed": seed, "train_s": train_s, "eval_s": time.perf_counter() - tick - train_s,
              "curve": curve, "selections": selections}  # fmt: skip
    path.write_text(json.dumps(result))
    return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
