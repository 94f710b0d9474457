"""``RPOModel``: the RPO policy as one object, for driving training from your own loop.

NeMo-Aligner's ``MegatronGPTDPOModel`` is the model of it: the Megatron GPT chunks of this rank (any
TP x PP x DP layout), their optimizer and learning-rate schedule, and the loss, built from the typed
component configs (``ModelConfig``, ``ParallelConfig``, ``OptimConfig``, ``LossConfig``), with the
methods a training loop calls. Every method is a thin call into the functions ``nemo-rpo-train`` runs
(``training.builder``, ``training.step``, ``training.checkpoint``, ``generation``, ``models.hf_io``), so
the numbers are the CLI's.

Data parallelism: every data-parallel rank passes its own examples (:meth:`RPOModel.shard`); losses are
normalised over the global batch. Tensor- and pipeline-parallel peers pass the same examples.

    model = RPOModel(ModelConfig(), ParallelConfig(tp=2), OptimConfig(lr=3e-3), LossConfig("rpo_bwd"),
                     max_steps=40)
    ref = model.reference_logps(dataset.examples)             # pi_ref := the initial policy (Alg. 1)
    for step in range(40):
        metrics = model.train_step(model.shard(batch_of(step)), ref_logps=ref)

Launch: ``python my_loop.py`` (CPU or one GPU), ``torchrun --nproc_per_node=N my_loop.py`` (the layout
comes from ``ParallelConfig``; data parallelism is what is left). See ``examples/rpo_model_offline.py``.
"""

from __future__ import annotations

from nemo_rpo.distributed.cpu_support import prepare_megatron_import

prepare_megatron_import()  # before megatron is first imported (warnings; deferred torch.compile on CPU)

import dataclasses  # noqa: E402 - megatron must not be imported before prepare_megatron_import
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from megatron.core.utils import unwrap_model  # noqa: E402

from nemo_rpo.algorithms.common import microbatches, table_lookup  # noqa: E402
from nemo_rpo.config.schema import (  # noqa: E402
    CheckpointConfig,
    GenerationConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RPOConfig,
    TokenizerConfig,
    TrainerConfig,
)
from nemo_rpo.data.preference import PreferenceExample  # noqa: E402
from nemo_rpo.data.prompts import prompts_from_texts  # noqa: E402
from nemo_rpo.data.tokenizer import build_tokenizer  # noqa: E402
from nemo_rpo.distributed.launch import ParallelInfo, init_distributed  # noqa: E402
from nemo_rpo.generation import GenerationOutput, generate, sampling_generator  # noqa: E402
from nemo_rpo.losses import LOSSES  # noqa: E402
from nemo_rpo.models.gpt import shares_prompt  # noqa: E402
from nemo_rpo.models.hf_io import export_hf_model  # noqa: E402
from nemo_rpo.training.builder import build_policy_chunks  # noqa: E402
from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from nemo_rpo.training.logger import step_metrics  # noqa: E402
from nemo_rpo.training.optimizer import build_optimizer  # noqa: E402
from nemo_rpo.training.step import loss_report, sequence_logps, train_step  # noqa: E402

__all__ = ["RPOModel"]


class RPOModel:
    """The RPO policy of this rank: Megatron GPT chunks + optimizer + schedule + loss (module docstring).

    Attributes:
        chunks: the DDP-wrapped model chunk(s) of this rank's pipeline stage (megatron's schedules' list).
        optimizer, scheduler: megatron's optimizer and learning-rate schedule.
        tokenizer: the tokenizer (the built-in byte tokenizer by default).
        info: where this process sits in the TP x PP x DP grid.
        step: optimizer steps taken (restored by :meth:`load`).
    """

    def __init__(
        self,
        model: ModelConfig | None = None,
        parallel: ParallelConfig | None = None,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        *,
        max_steps: int,
        micro_batch_size: int = 8,
        seed: int = 1234,
        tokenizer: TokenizerConfig | None = None,
        generation: GenerationConfig | None = None,
    ) -> None:
        """Start torch.distributed (if needed) and megatron's groups, then build the policy.

        Args:
            model, parallel, optim, loss: the component configs (their defaults: the embedded tiny GPT,
                one process, Adam at 3e-3 with warmup + cosine decay, ``rpo_bwd``).
            max_steps: length of the learning-rate schedule.
            micro_batch_size: prompts per forward pass (each with its K responses).
            seed: seeds python, numpy, torch, megatron's RNG tracker and the weight initialisation.
            tokenizer: which tokenizer (``vocab_size`` of ``model`` wins when set).
            generation: sampling settings of :meth:`generate`.
        """
        self.model_cfg = model or ModelConfig()
        self.parallel = parallel or ParallelConfig()
        self.optim = optim or OptimConfig()
        self.loss = loss or LossConfig()
        self.generation = generation or GenerationConfig()
        self.max_steps, self.micro_batch_size, self.seed = max_steps, micro_batch_size, seed
        self.tokenizer_cfg = tokenizer or TokenizerConfig()
        self.info: ParallelInfo = init_distributed(self.parallel, seed)
        self.tokenizer = build_tokenizer(self.tokenizer_cfg)
        self.vocab_size = self.model_cfg.vocab_size or self.tokenizer.vocab_size
        self.chunks = build_policy_chunks(self.model_cfg, self.parallel, self.vocab_size, seed=seed)
        self.optimizer, self.scheduler = build_optimizer(self.chunks, self.optim, self.parallel, max_steps)
        self.step = 0

    # ------------------------------------------------------------------ data
    @property
    def is_logging_rank(self) -> bool:
        """The last rank: it holds the last pipeline stage (where losses are computed) and prints."""
        return self.info.rank == self.info.world_size - 1

    def shard(self, examples: Sequence[PreferenceExample]) -> list[PreferenceExample]:
        """This data-parallel rank's share of a global batch (every ``dp_size``-th example)."""
        return list(examples[self.info.dp_rank :: self.info.dp_size])

    def batches(self, examples: Sequence[PreferenceExample], *, fill: bool = False) -> list:
        """``examples`` as padded micro-batches on this rank's device (what the schedules take)."""
        return microbatches(examples, self.micro_batch_size, self.tokenizer.pad_id, self.info.device, fill=fill,
                            share_prompt=shares_prompt(self.model_cfg))  # fmt: skip

    # ------------------------------------------------------------------ reference, loss, step
    def reference_logps(
        self, examples: Sequence[PreferenceExample], num_rows: int | None = None
    ) -> torch.Tensor:
        """Summed response log-probs ``[num_rows, R]`` under the current weights, rows by ``example.index``.

        Called before training it is offline RPO's reference table (the initial policy, Alg. 1 line 1).
        Each data-parallel rank passes its own examples; every rank gets the whole table.
        ``num_rows`` defaults to one past the largest index on any rank. For a token-level loss the table is
        ``[num_rows, R, L]``: each response token's log-prob, L the longest response on any rank.
        """
        if num_rows is None:
            top = torch.tensor([max(ex.index for ex in examples) + 1], dtype=torch.long)
            torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX)
            num_rows = int(top.item())
        width = None
        if LOSSES[self.loss.name].token_level:
            longest = torch.tensor([max(len(r) for ex in examples for r in ex.sequence_responses)])
            torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
            width = int(longest.item())
        return sequence_logps(self.chunks, self.batches(examples, fill=True), num_rows, token_width=width)

    def loss_and_metrics(
        self, examples: Sequence[PreferenceExample], ref_logps: torch.Tensor | None = None
    ) -> dict:
        """The loss and metrics of a batch (forward only; no update): the keys ``metrics.jsonl`` logs."""
        tick = time.perf_counter()
        report = loss_report(self.chunks, self.batches(examples), table_lookup(ref_logps), self.loss)
        lr = self.optimizer.param_groups[0]["lr"]
        return step_metrics(self.step, report, float("nan"), lr, time.perf_counter() - tick)

    def train_step(
        self, examples: Sequence[PreferenceExample], ref_logps: torch.Tensor | None = None
    ) -> dict:
        """One optimizer step on this rank's ``examples`` (Alg. 1 lines 3-5); returns the step's metrics.

        ``ref_logps``: a :meth:`reference_logps` table (rows by ``example.index``), for losses that use
        a reference. A step whose loss or gradient is not finite is skipped (``metrics["skipped"]``).
        """
        tick = time.perf_counter()
        result = train_step(self.chunks, self.optimizer, self.scheduler, self.batches(examples),
                            table_lookup(ref_logps), self.loss)  # fmt: skip
        self.step += 1
        metrics = step_metrics(
            self.step, result.report, result.grad_norm, result.lr, time.perf_counter() - tick
        )
        metrics["skipped"] = result.skipped
        return metrics

    # ------------------------------------------------------------------ generation
    def generate(
        self, prompts: Sequence[str], k: int, *, seed: int = 0
    ) -> tuple[list[list[str]], GenerationOutput]:
        """Sample ``k`` responses per prompt (``generation`` settings); ``(texts [B][K], tokens and logps)``.

        Collective over the model-parallel group: TP/PP peers pass the same prompts and seed.
        """
        ids = [
            p.ids
            for p in prompts_from_texts(prompts, self.tokenizer, max_prompt_len=self.model_cfg.max_seq_len)
        ]
        out = generate(self.chunks, ids, self.generation, num_samples=k, eos_id=self.tokenizer.eos_id,
                       pad_id=self.tokenizer.pad_id, vocab_size=self.tokenizer.vocab_size,
                       generator=sampling_generator(self.seed + seed, self.step))  # fmt: skip
        texts = [self.tokenizer.decode(r) for r in out.response_ids()]
        return [texts[i : i + k] for i in range(0, len(texts), k)], out

    # ------------------------------------------------------------------ checkpoints
    def save(self, exp_dir: str | os.PathLike, *, keep_last: int | None = None) -> Path:
        """Save a distributed checkpoint of step :attr:`step` under ``<exp_dir>/checkpoints`` (collective).

        Weights, optimizer, schedule and RNG; it loads into any TP x PP x DP layout (:meth:`load`), and
        ``nemo-rpo-convert mcore-to-hf --ckpt <exp_dir>`` reads it (``config.yaml`` is written beside it).
        """
        if self.info.rank == 0:
            Path(exp_dir).mkdir(parents=True, exist_ok=True)
            (Path(exp_dir) / "config.yaml").write_text(self._run_config_yaml())
        extra = {"step": self.step}
        if self.model_cfg.lora.rank > 0:  # the checkpoint holds the adapters; the base is built from the seed
            extra["lora_base"] = {"seed": self.seed}
        return save_checkpoint(exp_dir, self.step, self.chunks, self.optimizer, self.scheduler, extra,
                               keep_last=keep_last)  # fmt: skip

    def load(self, path: str | os.PathLike, *, weights_only: bool = False) -> int:
        """Load a run directory's latest checkpoint (or one checkpoint directory), saved with any layout.

        ``weights_only``: keep this model's optimizer, schedule and step (e.g. start from SFT weights).
        Returns the checkpoint's step.
        """
        ckpt = find_latest_checkpoint(path) or Path(path)
        if weights_only:
            extra = load_checkpoint(ckpt, self.chunks, None, None, restore_rng=False)
            if hasattr(self.optimizer, "reload_model_params"):  # fp32 main copies of 16-bit weights
                self.optimizer.reload_model_params()
            return int(extra["step"])
        extra = load_checkpoint(ckpt, self.chunks, self.optimizer, self.scheduler)
        self.step = int(extra["step"])
        return self.step

    def export_hf(self, out: str | os.PathLike) -> Path:
        """Write the policy as a Hugging Face Llama/Qwen2 directory (collective; rank 0 writes).

        At TP=PP=1 the weights of this process are written directly; otherwise the model is saved as a
        distributed checkpoint and ``nemo-rpo-convert mcore-to-hf`` reads it back whole in one process.
        """
        out = Path(out)
        dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[self.model_cfg.precision]
        cfg = dataclasses.replace(self.model_cfg, vocab_size=self.vocab_size)
        source = self.tokenizer_cfg.path if self.tokenizer_cfg.type == "hf" else None
        if self.parallel.tp * self.parallel.pp == 1:
            if self.info.rank == 0:
                export_hf_model(out, unwrap_model(self.chunks)[0], cfg, dtype=dtype, tokenizer_source=source)
            torch.distributed.barrier()
            return out
        with tempfile.TemporaryDirectory(prefix="nemo_rpo_export_") as tmp:
            tmp = _shared_path(tmp)
            self.save(tmp)
            if self.info.rank == 0:
                env = {
                    k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and "TORCHELASTIC" not in k
                }
                done = subprocess.run([sys.executable, "-m", "nemo_rpo.cli.convert", "mcore-to-hf", "--ckpt", tmp,
                                       "--out", str(out)], env=env, capture_output=True, text=True)  # fmt: skip
                if done.returncode != 0:
                    raise RuntimeError(
                        f"export_hf: nemo-rpo-convert mcore-to-hf failed: {done.stderr.strip()}"
                    )
            torch.distributed.barrier()
        return out

    def _run_config_yaml(self) -> str:
        """``config.yaml`` for the checkpoint: the components in the CLI's schema (what its tools read)."""
        from omegaconf import OmegaConf

        cfg = RPOConfig(k=2, loss=self.loss, model=self.model_cfg, parallel=self.parallel, optim=self.optim,
                        trainer=TrainerConfig(max_steps=self.max_steps, micro_batch_size=self.micro_batch_size,
                                              global_batch_size=self.micro_batch_size, seed=self.seed),
                        checkpoint=CheckpointConfig())  # fmt: skip
        cfg.data.tokenizer = self.tokenizer_cfg
        return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


# Launch variables of this job, kept from the one-process converter (torchrun's agent store among them).
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")  # fmt: skip


def _shared_path(local: str) -> str:
    """Rank 0's temporary directory, the same path on every rank (a shared file system is assumed)."""
    box = [local]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
