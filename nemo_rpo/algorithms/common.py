"""Pieces shared by the offline, online and iterative loops: batching, resume, saving, console output."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.utils import unwrap_model

from nemo_rpo.algorithms.judge_eval import embedded_task, held_out_prompts, judge_reward, report_judge
from nemo_rpo.config.schema import ConfigError, LossConfig, RPOConfig
from nemo_rpo.data.batch import PreferenceBatch, collate, packed_length, round_up
from nemo_rpo.data.errors import DataError
from nemo_rpo.data.jsonl import write_jsonl
from nemo_rpo.data.preference import PreferenceDataset, PreferenceExample, load_preference_dataset
from nemo_rpo.data.sampler import split_micro_batches
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.hf_io import load_hf_weights_, read_hf_state
from nemo_rpo.models.lora import has_adapters
from nemo_rpo.training.builder import save_resolved_config
from nemo_rpo.training.checkpoint import (
    checkpoint_layout,
    checkpoint_scheduler_state,
    checkpoint_step,
    find_latest_checkpoint,
    load_checkpoint,
)  # fmt: skip
from nemo_rpo.training.logger import console_line, step_metrics
from nemo_rpo.training.optimizer import schedule_change
from nemo_rpo.training.step import NonFiniteStepsError, StepResult


@dataclass
class RunSummary:
    steps: int
    first: dict | None
    last: dict | None
    seconds: float


@dataclass(frozen=True)
class Iteration:
    """One round of an iterative schedule: steps ``[start, end)`` with their own beta and eta."""

    index: int
    start: int
    end: int
    loss: LossConfig


def iteration_plan(cfg: RPOConfig) -> list[Iteration]:
    """Alg. 3/4's rounds; a single iteration covering every step when ``schedule.iterations == 1``."""
    n, total = cfg.schedule.iterations, cfg.trainer.max_steps
    steps = cfg.schedule.steps or [total // n + (1 if i < total % n else 0) for i in range(n)]
    plan, start = [], 0
    for i, count in enumerate(steps):
        loss = cfg.loss
        if cfg.schedule.beta is not None:
            loss = dataclasses.replace(loss, beta=cfg.schedule.beta[i])
        if cfg.schedule.eta is not None:
            loss = dataclasses.replace(loss, eta=cfg.schedule.eta[i])
        plan.append(Iteration(i, start, start + count, loss))
        start += count
    return plan


def iteration_at(plan: Sequence[Iteration], step: int) -> Iteration:
    return next(it for it in plan if it.start <= step < it.end)


class PolicyAlgorithm:
    """What offline and online RPO hand the trainer alike (:mod:`nemo_rpo.algorithms.trainer`): the policy's
    metrics and console line, the iteration in each checkpoint, and on the embedded task the held-out
    judge check before the first step and after the last. Subclasses set ``info``, ``tokenizer``,
    ``model``, ``optimizer``, ``scheduler`` in ``build``."""

    def __init__(self, cfg: RPOConfig) -> None:
        self.cfg = cfg
        self.plan = iteration_plan(cfg)
        self.held_out, self.judged = None, {}
        self.adapter_ref = None  # a LoRA policy's reference (training.frozen.AdapterReference)

    def judge_before(self, start: int) -> None:
        self.held_out = held_out_prompts(self.cfg, self.tokenizer) if embedded_task(self.cfg) else None
        if self.held_out:
            self.judged = {start: judge_reward(self.cfg, self.model, self.tokenizer, self.held_out)}

    def finish(self) -> None:
        if self.held_out:
            self.judged[self.cfg.trainer.max_steps] = judge_reward(
                self.cfg, self.model, self.tokenizer, self.held_out
            )
            report_judge(self.judged, self.info, self.cfg.exp_dir)

    def metrics(self, step: int, result: StepResult, seconds: float) -> dict:
        return step_metrics(step, result.report, result.grad_norm, result.lr, seconds)

    def console_line(self, metrics: dict) -> str:
        return console_line(metrics, self.cfg.trainer.max_steps)

    def checkpoint_extra(self, step: int) -> dict:
        extra = {"iteration": iteration_at(self.plan, step).index}
        if self.adapter_ref is not None:  # a LoRA run saves its adapters: say where their base weights are
            extra["lora_base"] = self.adapter_ref.base
        return extra

    def ends_iteration(self, step: int) -> bool:
        """Whether 1-based ``step`` is the last of its iteration."""
        return step == iteration_at(self.plan, step - 1).end


def microbatches(
    examples: Sequence[PreferenceExample],
    micro_batch_size: int,
    pad_id: int,
    device,
    *,
    fill: bool = False,
    width: int | None = None,
    share_prompt: bool = False,
) -> list[PreferenceBatch]:
    """This rank's prompts for a step as micro-batches padded to one width (pipeline p2p needs it).

    ``fill=True`` (forward-only passes, where a repeated row changes nothing) repeats the last example
    until the count divides ``micro_batch_size``; training batches must divide it exactly. ``width``
    fixes the padded length (online batches: the same shape every step, so CPU kernels are not
    re-planned for each new length). ``share_prompt``: packed micro-batches, each prompt once
    (``models.gpt.shares_prompt(cfg.model)``), all packed to one width too.
    """
    if fill and len(examples) % micro_batch_size:
        examples = list(examples) + [examples[-1]] * (micro_batch_size - len(examples) % micro_batch_size)
    longest = max(len(ex.prompt_ids) + max(map(len, ex.sequence_responses)) for ex in examples)
    width = max(width or 0, round_up(longest))
    # one sequence per prompt (SFT) has nothing to share
    share_prompt = share_prompt and len(examples[0].sequence_responses) > 1
    pack_to = round_up(max(map(packed_length, examples))) if share_prompt else None
    chunks = split_micro_batches(list(range(len(examples))), micro_batch_size)
    return [
        collate(
            [examples[i] for i in chunk], pad_id, pad_to=width, share_prompt=share_prompt, pack_to=pack_to
        ).to(device)
        for chunk in chunks
    ]


def table_lookup(table: torch.Tensor | None) -> Callable[[PreferenceBatch], torch.Tensor | None]:
    """``ref_lookup`` for train_step: rows of a ``[N, R]`` log-prob table by each batch's ``index``."""

    def lookup(batch: PreferenceBatch) -> torch.Tensor | None:
        if table is None:
            return None
        return table[batch.index.cpu()].to(batch.input_ids.device)

    return lookup


def init_weights_from(cfg: RPOConfig, model, info: ParallelInfo, optimizer=None) -> dict | None:
    """Start a new run from ``checkpoint.init_from`` weights, else from ``model.init_from_hf``.

    Skipped when ``exp_dir`` has a checkpoint to resume from, except for the base weights of a LoRA model
    (``model.lora.rank > 0``), which its checkpoints do not hold: they are read from the pointer the
    checkpoint carries. ``optimizer``: re-read its fp32 main copies of 16-bit parameters (built before the
    weights were loaded).

    Returns:
        For a LoRA model, the pointer to its base weights (``{"checkpoint": dir}``, ``{"hf": dir}`` or
        ``{"seed": n}``: see :class:`~nemo_rpo.training.frozen.AdapterReference`); ``None`` otherwise.
    """
    lora = has_adapters(model)
    latest = find_latest_checkpoint(cfg.exp_dir) if cfg.checkpoint.resume else None
    hf_dir, source = cfg.model.init_from_hf, cfg.checkpoint.init_from
    if latest is not None:
        if not lora:
            return None
        pointer = json.loads((latest / "extra.json").read_text(encoding="utf-8")).get("lora_base")
        if pointer is None:
            raise DataError(str(latest), None, "lora_base", "a LoRA run's checkpoint must say where its base "
                            "weights are; this one does not (saved without model.lora.rank?)")  # fmt: skip
        hf_dir, source = pointer.get("hf"), pointer.get("checkpoint")
        if pointer.get("seed", cfg.trainer.seed) != cfg.trainer.seed:
            raise ConfigError(f"trainer.seed: the LoRA run's base model was built from seed {pointer['seed']}, "
                              f"not {cfg.trainer.seed}")  # fmt: skip
    if source is not None:  # with model.init_from_hf too: shape and tokenizer from HF, weights from here
        path = find_latest_checkpoint(source) or Path(source)
        if not (path / "COMPLETE").is_file():
            raise ConfigError(f"checkpoint.init_from: {source} is neither a run directory with checkpoints "
                              "nor a complete checkpoint directory")  # fmt: skip
        load_checkpoint(path, model, None, None, restore_rng=False, part="base" if lora else "all")
        loaded, pointer = str(path), {"checkpoint": str(path)}
    elif hf_dir is not None:
        hf_state = read_hf_state(hf_dir)
        for chunk in unwrap_model(model):
            load_hf_weights_(chunk, hf_state, cfg.model)
        del hf_state
        loaded, pointer = hf_dir, {"hf": hf_dir}
    else:
        return {"seed": cfg.trainer.seed} if lora else None
    if optimizer is not None and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()
    if info.rank == 0:
        print(f"initialised {'base ' if lora else ''}weights from {loaded}", flush=True)
    return pointer if lora else None


def check_resume(cfg, info: ParallelInfo) -> bool:
    """Check ``exp_dir``'s latest checkpoint against this config, before anything is built or written.

    ``cfg`` is any run config with ``exp_dir``, ``checkpoint``, ``trainer`` and ``optim``.

    Returns:
        True when the run is complete (its checkpoint is at ``trainer.max_steps``): rank 0 says so in one
        line and the caller returns without building the model.

    Raises:
        DataError: the checkpoint is past ``trainer.max_steps``; or the steps left would run on another
            learning-rate schedule than the checkpoint's (e.g. a larger ``trainer.max_steps`` recomputes
            the decay) and ``checkpoint.resume_schedule`` is ``match``: one line naming both overrides.
    """
    path = find_latest_checkpoint(cfg.exp_dir) if cfg.checkpoint.resume else None
    if path is None:
        return False
    step, max_steps = checkpoint_step(path), cfg.trainer.max_steps
    if step == max_steps:
        if info.rank == 0:
            print(f"run complete: {path} is at trainer.max_steps={max_steps}; nothing to do (a larger "
                  "trainer.max_steps trains on, checkpoint.resume=false starts over)", flush=True)  # fmt: skip
        return True
    if step > max_steps:
        raise DataError(str(path), None, "step", f"the checkpoint is at step {step}, past trainer.max_steps="
                        f"{max_steps}; set trainer.max_steps={step} or more, or checkpoint.resume=false to start over")  # fmt: skip
    saved = checkpoint_scheduler_state(path)
    change = None if saved is None else schedule_change(saved, cfg.optim, max_steps, step)
    if change is None:
        return False
    mode = cfg.checkpoint.resume_schedule
    if mode == "match":
        raise DataError(str(path), None, "schedule", f"this config's learning-rate schedule differs from the "
                        f"checkpoint's for the steps left ({change}); set checkpoint.resume_schedule=checkpoint "
                        "to keep the checkpoint's, or checkpoint.resume_schedule=config to use this config's")  # fmt: skip
    if info.rank == 0:
        kept = "kept from the checkpoint" if mode == "checkpoint" else "recomputed for this config"
        print(
            f"resume: learning-rate schedule {kept} (checkpoint.resume_schedule={mode}; {change})", flush=True
        )
    return False


@contextlib.contextmanager
def staged_jsonl(records: Sequence[dict], path: str | Path) -> Iterator[str]:
    """A temporary JSONL copy of ``records`` to read as the file ``path``, which is not written yet.

    Embedded data is written to ``exp_dir`` with the resolved config, once a run's checks have passed, so
    that a run failing on bad input leaves nothing behind; errors about the copy name ``path``.
    """
    with tempfile.TemporaryDirectory(prefix="nemo_rpo_") as tmp:
        staged = str(write_jsonl(records, Path(tmp) / Path(path).name))
        try:
            yield staged
        except DataError as err:
            if err.path == staged:
                err.path = str(path)
            raise


def read_preferences(cfg, tokenizer, path: str | None, *, k: int, require_rewards: bool) -> PreferenceDataset:
    """Tokenized preference data from ``path`` (its ``path`` attribute set for errors and the sampler).

    ``cfg`` is a run config with ``exp_dir``, ``k``, ``data`` and ``model`` (policy or reward model).
    ``path=None`` is the embedded default: the synthetic preferences with ``cfg.k`` responses, read from
    a staged copy until :func:`save_run_files` writes them to ``exp_dir``.
    """
    stack = contextlib.ExitStack()
    source = path
    if path is None:
        path = _embedded_path(cfg)
        source = stack.enter_context(staged_jsonl(_embedded_records(cfg), path))
    with stack:
        dataset = load_preference_dataset(source, cfg.data, tokenizer, k=k, max_seq_len=cfg.model.max_seq_len,
                                          require_rewards=require_rewards)  # fmt: skip
    dataset.path = str(path)
    return dataset


def save_run_files(cfg, info: ParallelInfo) -> None:
    """Rank 0 writes ``config.yaml`` and the embedded data (when used) to ``exp_dir``, once checks passed."""
    save_resolved_config(cfg, info)
    if info.rank == 0 and cfg.data.train_path is None:
        write_jsonl(_embedded_records(cfg), _embedded_path(cfg))


def _embedded_path(cfg) -> Path:
    return Path(cfg.exp_dir) / "data" / f"synthetic_k{cfg.k}.jsonl"


def _embedded_records(cfg) -> list[dict]:
    return make_synthetic_preferences(512, cfg.k, seed=0)


def maybe_resume(cfg, model, optimizer, scheduler, info: ParallelInfo) -> dict:
    """Load the latest checkpoint of ``exp_dir`` (weights, optimizer, scheduler, RNG); ``{}`` if none.

    ``cfg`` is any run config with ``exp_dir`` and ``checkpoint`` (policy or reward-model training).

    Says so in one line, with the layout change when the checkpoint was saved with another TP/PP/DP.
    """
    path = find_latest_checkpoint(cfg.exp_dir) if cfg.checkpoint.resume else None
    if path is None:
        return {}
    extra = load_checkpoint(path, model, optimizer, scheduler)
    if info.rank == 0:
        saved, now = checkpoint_layout(path), {"tp": info.tp_size, "pp": info.pp_size, "dp": info.dp_size}
        resharded = ""
        if any(saved.get(k, v) != v for k, v in now.items()):
            resharded = (
                " (resharded: " + ", ".join(f"{k} {saved.get(k, v)}->{v}" for k, v in now.items()) + ")"
            )
        print(f"resumed from {path} at step {extra['step']}{resharded}", flush=True)
    return extra


def count_skipped(result: StepResult, skipped: int, step: int, limit: int) -> int:
    """Add a non-finite step to the run's count; stop the run once it exceeds ``limit``.

    Args:
        result: the step's result (its update was not applied when ``non_finite``).
        skipped: steps skipped so far in this run (restored from the checkpoint on resume).
        step: the 1-based step just taken, for the message.
        limit: ``trainer.max_skipped_steps``.

    Returns:
        The new count.

    Raises:
        NonFiniteStepsError: more than ``limit`` steps were skipped; raised before the caller can save.
    """
    if not result.non_finite:
        return skipped
    skipped += 1
    if skipped > limit:
        raise NonFiniteStepsError(
            f"trainer.max_skipped_steps: {skipped} steps had a non-finite loss or gradient norm (the last "
            f"at step {step}), more than the limit of {limit}; stopped before saving a checkpoint"
        )
    return skipped


def should_save(cfg, step: int) -> bool:
    interval = cfg.checkpoint.save_interval
    return step == cfg.trainer.max_steps or (interval > 0 and step % interval == 0)


def progress_bar(
    cfg: RPOConfig, info: ParallelInfo, start: int, total: int | None = None, desc: str = "train"
):
    if info.rank != 0 or not cfg.logging.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=total or cfg.trainer.max_steps, initial=start, desc=desc, dynamic_ncols=True,
                leave=False, disable=None)  # fmt: skip


def emit(progress, info: ParallelInfo, line: str) -> None:
    """Print from the last rank (it holds the last pipeline stage), around the tqdm bar if any."""
    if info.rank != info.world_size - 1:
        return
    if progress is not None:
        progress.write(line)
    else:
        print(line, flush=True)
