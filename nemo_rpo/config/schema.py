"""Typed configuration: one dataclass per component, every default lives here and nowhere else.

Hydra composes YAML from ``conf/`` on top of these schemas (registered in :mod:`nemo_rpo.config.store`);
the CLI converts the result with ``OmegaConf.to_object`` so ``__post_init__`` range checks run, and
only these dataclasses travel below ``cli/``. This module imports nothing from the rest of the package
at import time; ``LossConfig`` validates ``loss.name`` against the pure-torch loss registry
(:data:`nemo_rpo.losses.LOSSES`, the one list of losses) when an instance is checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


def _check(cond: bool, field_name: str, problem: str) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {problem}")


@dataclass
class LossConfig:
    """Which objective and its hyper-parameters (paper §3, Table 1).

    ``name`` is a loss of the registry (:data:`nemo_rpo.losses.LOSSES`), or one of its aliases:
    ``rpo_{sq,sqloo,bwd,fwd}`` use the explicit rewards; ``dpo cdpo ipo distill_dpo simpo`` are the
    Table 1 algorithms expressed as RPO configurations (``kto`` is a separate baseline); NeMo-Aligner's
    names ``rpo_bwd_kl`` and ``rpo_fwd_kl`` are aliases. Each loss reads the fields it declares.
    """

    name: str = "rpo_bwd"
    beta: float = 0.1
    eta: float = 1.0
    # cdpo: probability that a preference label is flipped; Table 1's c = 1 - label_smoothing.
    label_smoothing: float = 0.1
    # simpo: target reward margin gamma.
    gamma: float = 0.0
    # Optional NLL term on the highest-reward response (NeMo-Aligner's sft_loss_weight).
    sft_loss_weight: float = 0.0
    # kto: weights of desirable / undesirable examples.
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0
    # Per-token mean instead of summed response log-probs, for policy and reference alike (NeMo-Aligner's
    # preference_average_log_probs; loss=dpo with it is TRL's sigmoid_norm). simpo and sft always average.
    average_log_probs: bool = False
    # rpo_token_*: weight of prefix depth t is token_decay^(T - t); 0 = sequence-level RPO, 1 = every depth
    # alike (docs/token_level.md). 0.9 puts half the weight on the last ~7 tokens of each prompt's responses.
    token_decay: float = 0.9

    def __post_init__(self) -> None:
        # Pure torch; imported here to keep this module light.
        from nemo_rpo.losses import LOSSES, canonical_name

        try:
            self.name = canonical_name(self.name)
        except ValueError as err:  # "unknown loss 'x'; choose one of ..."
            raise ConfigError(f"loss.name: {err}") from None
        _check(math.isfinite(self.beta) and self.beta > 0, "loss.beta", f"must be > 0, got {self.beta}")
        _check(math.isfinite(self.eta) and self.eta > 0, "loss.eta", f"must be > 0, got {self.eta}")
        _check(
            0.0 <= self.label_smoothing < 0.5,
            "loss.label_smoothing",
            f"must be in [0, 0.5), got {self.label_smoothing}",
        )
        _check(math.isfinite(self.gamma), "loss.gamma", f"must be finite, got {self.gamma}")
        _check(self.sft_loss_weight >= 0, "loss.sft_loss_weight", f"must be >= 0, got {self.sft_loss_weight}")
        _check(self.kto_desirable_weight > 0, "loss.kto_desirable_weight", "must be > 0")
        _check(self.kto_undesirable_weight > 0, "loss.kto_undesirable_weight", "must be > 0")
        _check(
            0.0 <= self.token_decay <= 1.0, "loss.token_decay", f"must be in [0, 1], got {self.token_decay}"
        )
        _check(not (LOSSES[self.name].token_level and self.average_log_probs), "loss.average_log_probs",
               f"{self.name} is token-level: it reads per-token log-probs, not their mean")  # fmt: skip


# The transformer's linear layers LoRA can adapt (megatron's names; Llama's q/k/v, o, gate/up, down).
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


@dataclass
class LoraConfig:
    """LoRA adapters (``W + alpha / rank * B A``) on the transformer's linear layers (docs/lora.md).

    ``rank = 0`` trains every weight. With ``rank > 0`` the base weights are frozen and only the adapters
    train, are saved and reach the optimizer; the reference policy is the model with its adapters off.
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        _check(self.rank >= 0, "model.lora.rank", f"must be >= 0 (0 = off), got {self.rank}")
        _check(
            self.alpha > 0 and math.isfinite(self.alpha), "model.lora.alpha", f"must be > 0, got {self.alpha}"
        )
        _check(0.0 <= self.dropout < 1, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")
        unknown = [m for m in self.target_modules if m not in LORA_TARGETS]
        _check(not unknown, "model.lora.target_modules",
               f"unknown {unknown}; choose from {', '.join(LORA_TARGETS)}")  # fmt: skip
        _check(len(set(self.target_modules)) == len(self.target_modules), "model.lora.target_modules",
               "names a module twice")  # fmt: skip
        _check(self.rank == 0 or bool(self.target_modules), "model.lora.target_modules",
               "is empty but model.lora.rank > 0")  # fmt: skip


@dataclass
class ModelConfig:
    """Megatron GPT shape. Defaults are the embedded tiny model; Llama shapes are set in conf/model/."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # GQA; None = multi-head attention
    ffn_hidden_size: Optional[int] = None  # None = 4 * hidden_size
    kv_channels: Optional[int] = None  # None = hidden_size / num_attention_heads
    vocab_size: Optional[int] = None  # None = the tokenizer's vocabulary size
    make_vocab_size_divisible_by: int = 128
    max_seq_len: int = 256
    normalization: str = "RMSNorm"  # RMSNorm | LayerNorm
    layernorm_epsilon: float = 1e-5
    activation: str = "swiglu"  # swiglu | gelu
    position_embedding_type: str = "rope"  # rope | learned_absolute
    rotary_base: int = 10000
    rotary_percent: float = 1.0
    untie_embeddings_and_output_weights: bool = False
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    precision: str = "fp32"  # fp32 | bf16 | fp16
    transformer_impl: str = "auto"  # auto (TE when importable) | local | transformer_engine
    fp8: Optional[str] = None  # None | e4m3 | hybrid (needs transformer_engine)
    fp8_recipe: str = "delayed"  # delayed | tensorwise | mxfp8 | blockwise
    recompute_granularity: Optional[str] = None  # None | full | selective
    core_attention: str = "sdpa"  # local spec only: sdpa (fused torch kernel) | megatron (unfused)
    # SwiGLU and RoPE through nemo-rpo's autograd functions (the same numbers, fewer copies; CPU and GPU):
    # the fast_paths patches of nemo_rpo.patches; false = megatron's own code for this model.
    fast_paths: bool = True
    # Compute each prompt once for its K responses (packed micro-batches; same numbers): null = wherever
    # the model supports it (local spec with sdpa core attention), true = required, false = never.
    share_prompt: Optional[bool] = None
    # The training path's LM head + NLL a block of this many tokens at a time (the [tokens, V] logits and
    # their gradient never exist whole; the same numbers, one more LM-head product in the backward);
    # 0 = the output layer's whole logits, then the NLL.
    logps_chunk_size: int = 512
    # A Hugging Face Llama/Mistral/Qwen2 directory (safetensors, .bin or one .gguf): the CLI takes the shape
    # and the tokenizer from it (command-line model.* / data.tokenizer.* overrides win), and a new run
    # starts from its weights (unless checkpoint.init_from names other weights; ignored when resuming).
    init_from_hf: Optional[str] = None
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _check(self.num_layers >= 1, "model.num_layers", "must be >= 1")
        _check(self.hidden_size >= 1, "model.hidden_size", "must be >= 1")
        _check(self.num_attention_heads >= 1, "model.num_attention_heads", "must be >= 1")
        _check(self.hidden_size % self.num_attention_heads == 0 or self.kv_channels is not None,
               "model.hidden_size", "must be divisible by num_attention_heads unless kv_channels is set")  # fmt: skip
        if self.num_query_groups is not None:
            _check(self.num_attention_heads % self.num_query_groups == 0, "model.num_query_groups",
                   "must divide num_attention_heads")  # fmt: skip
        _check(self.max_seq_len >= 8, "model.max_seq_len", "must be >= 8")
        _check(self.normalization in ("RMSNorm", "LayerNorm"), "model.normalization", "RMSNorm or LayerNorm")
        _check(self.activation in ("swiglu", "gelu"), "model.activation", "swiglu or gelu")
        _check(self.position_embedding_type in ("rope", "learned_absolute"), "model.position_embedding_type",
               "rope or learned_absolute")  # fmt: skip
        _check(self.precision in ("fp32", "bf16", "fp16"), "model.precision", "fp32, bf16 or fp16")
        _check(self.transformer_impl in ("auto", "local", "transformer_engine"), "model.transformer_impl",
               "auto, local or transformer_engine")  # fmt: skip
        _check(self.fp8 in (None, "e4m3", "hybrid"), "model.fp8", "null, e4m3 or hybrid")
        _check(
            self.fp8 is None or self.transformer_impl != "local",
            "model.fp8",
            "FP8 needs the transformer_engine spec",
        )
        _check(self.recompute_granularity in (None, "full", "selective"), "model.recompute_granularity",
               "null, full or selective")  # fmt: skip
        _check(self.core_attention in ("sdpa", "megatron"), "model.core_attention", "sdpa or megatron")
        _check(self.logps_chunk_size >= 0, "model.logps_chunk_size", "must be >= 0 (0 = whole logits)")
        _check(
            not self.share_prompt
            or (self.core_attention == "sdpa" and self.transformer_impl != "transformer_engine"),
            "model.share_prompt",
            "needs the local spec with core_attention=sdpa (set it to null or false otherwise)",
        )
        _check(0.0 <= self.hidden_dropout < 1 and 0.0 <= self.attention_dropout < 1, "model.hidden_dropout",
               "dropouts must be in [0, 1)")  # fmt: skip
        _check(self.lora.rank == 0 or self.transformer_impl != "transformer_engine", "model.lora.rank",
               "LoRA adapters need the local spec (model.transformer_impl=local or auto)")  # fmt: skip


@dataclass
class ParallelConfig:
    """Model parallelism; data parallelism is world_size / (tp * pp)."""

    tp: int = 1
    pp: int = 1
    use_distributed_optimizer: bool = False

    def __post_init__(self) -> None:
        _check(self.tp >= 1, "parallel.tp", f"must be >= 1, got {self.tp}")
        _check(self.pp >= 1, "parallel.pp", f"must be >= 1, got {self.pp}")


@dataclass
class TokenizerConfig:
    type: str = "byte"  # byte (built-in) | hf (a local Hugging Face tokenizer directory)
    path: Optional[str] = None

    def __post_init__(self) -> None:
        _check(self.type in ("byte", "hf"), "data.tokenizer.type", "byte or hf")
        _check(self.type != "hf" or bool(self.path), "data.tokenizer.path", "required when type=hf")


# Record fields a column (or JSON key) can be renamed to (data.columns.<field>=<column>).
RECORD_FIELDS = (
    "prompt", "responses", "rewards", "chosen", "rejected", "chosen_response", "rejected_response",
    "chosen_reward", "rejected_reward", "id",
)  # fmt: skip


@dataclass
class ColumnsConfig:
    """Where each record field is read from: ``data.columns.prompt=question`` reads the prompt from the
    column (or JSON key) ``question``. null = the field's own name."""

    prompt: Optional[str] = None
    responses: Optional[str] = None
    rewards: Optional[str] = None
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    chosen_response: Optional[str] = None
    rejected_response: Optional[str] = None
    chosen_reward: Optional[str] = None
    rejected_reward: Optional[str] = None
    id: Optional[str] = None

    def renames(self) -> dict[str, str]:
        """``{column: field}`` for every field read from a column of another name."""
        renames: dict[str, str] = {}
        for name in RECORD_FIELDS:
            column = getattr(self, name)
            if column is not None and column != name:
                _check(column not in renames, f"data.columns.{name}",
                       f"column {column!r} is already read as {renames.get(column)!r}")  # fmt: skip
                renames[column] = name
        return renames


@dataclass
class DataConfig:
    """Offline preference data. ``train_path=None`` uses the bundled synthetic dataset.

    ``train_path`` is a JSONL file, or (through the ``datasets`` library) a Hugging Face dataset: a
    ``save_to_disk`` folder, a directory of parquet / arrow / JSON Lines shards, one such file, or a glob.
    """

    train_path: Optional[str] = None
    val_path: Optional[str] = None
    # online / iterative: JSONL prompts (any format with a "prompt" field); None = the training data's
    # prompts (train_path, or the embedded synthetic task)
    prompts_path: Optional[str] = None
    format: str = "auto"  # auto | native | nemo_aligner | trl
    max_prompt_len: int = 96  # tokens; longer prompts are truncated from the left
    truncation: str = "truncate"  # truncate | drop | error : what to do with sequences over model.max_seq_len
    shuffle: bool = True
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    split: str = "train"  # Hugging Face dataset directories with several splits: the one to read
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)

    def __post_init__(self) -> None:
        _check(self.format in ("auto", "native", "nemo_aligner", "trl"), "data.format",
               "auto, native, nemo_aligner or trl")  # fmt: skip
        _check(bool(self.split), "data.split", "must not be empty")
        self.columns.renames()  # checks that no column is read twice
        _check(self.truncation in ("truncate", "drop", "error"), "data.truncation", "truncate, drop or error")
        _check(self.max_prompt_len >= 1, "data.max_prompt_len", "must be >= 1")


@dataclass
class OptimConfig:
    """Adam through megatron's get_megatron_optimizer, with warmup + decay."""

    lr: float = 3e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_steps: int = 5
    decay_style: str = "cosine"  # constant | linear | cosine

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", "must be in [0, lr]")
        _check(self.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables clipping)")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _check(
            self.decay_style in ("constant", "linear", "cosine"),
            "optim.decay_style",
            "constant, linear or cosine",
        )


@dataclass
class TrainerConfig:
    max_steps: int = 120
    global_batch_size: int = 32  # prompts per optimizer step, over all data-parallel ranks
    micro_batch_size: int = 8  # prompts per forward pass (each brings its K responses)
    log_interval: int = 1
    seed: int = 1234
    num_threads: Optional[int] = None  # CPU intra-op threads; None = torch's default
    # CPU only: glibc keeps freed memory instead of unmapping it every step (the process holds its
    # peak footprint): ~30k fewer page faults per anchor-benchmark step, up to 1.38x faster steps
    # (benchmarks/README.md). No effect on a GPU machine.
    keep_freed_memory: bool = True
    # the same numbers on any x86-64 CPU (ATen's baseline kernels, MKL's COMPATIBLE branch, no oneDNN,
    # num_threads or 1 thread) instead of the CPU's fastest kernels; slower (docs/determinism.md)
    deterministic: bool = False
    # steps with a NaN/inf loss or gradient are skipped (no update); more than this many stop the run
    max_skipped_steps: int = 10

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "trainer.max_steps", "must be >= 1")
        _check(
            self.max_skipped_steps >= 0,
            "trainer.max_skipped_steps",
            f"must be >= 0, got {self.max_skipped_steps}",
        )
        _check(self.micro_batch_size >= 1, "trainer.micro_batch_size", "must be >= 1")
        _check(self.global_batch_size >= self.micro_batch_size, "trainer.global_batch_size",
               f"{self.global_batch_size} is less than trainer.micro_batch_size={self.micro_batch_size}; "
               f"set trainer.micro_batch_size={self.global_batch_size} too")  # fmt: skip
        _check(self.log_interval >= 1, "trainer.log_interval", "must be >= 1")


@dataclass
class CheckpointConfig:
    save_interval: int = 0  # steps; 0 saves only at the end
    keep_last: int = 2
    resume: bool = True  # resume from the latest checkpoint in exp_dir when one exists
    # start a new run from these weights (a run directory or one checkpoint directory; any TP/PP layout),
    # e.g. the SFT policy; ignored when resuming from exp_dir
    init_from: Optional[str] = None
    # Resuming with a learning-rate schedule (optim.*, trainer.max_steps) that differs from the checkpoint's
    # over the remaining steps: "match" refuses, "checkpoint" keeps the checkpoint's (after its last step
    # the lr stays at its min_lr), "config" recomputes it for this config. Megatron-LM: its default assert,
    # --use-checkpoint-opt_param-scheduler, --override-opt_param-scheduler.
    resume_schedule: str = "match"

    def __post_init__(self) -> None:
        _check(self.save_interval >= 0, "checkpoint.save_interval", "must be >= 0")
        _check(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
        _check(self.resume_schedule in ("match", "checkpoint", "config"), "checkpoint.resume_schedule",
               f"match, checkpoint or config, got {self.resume_schedule!r}")  # fmt: skip


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class ScheduleConfig:
    """Iterative RPO (Alg. 3 offline, Alg. 4 online): ``iterations`` rounds; the reference becomes the
    current policy at the start of each. Per-iteration lists override ``steps``/``beta``/``eta``."""

    iterations: int = 1
    steps: Optional[list[int]] = None  # steps of each iteration; None = trainer.max_steps split evenly
    beta: Optional[list[float]] = None  # loss.beta of each iteration; None = loss.beta throughout
    eta: Optional[list[float]] = None  # loss.eta of each iteration
    # offline iterations >= 2 regenerate the data: K samples per prompt scored by the reward model, kept as
    # "all" K, or "best_vs_random" (chosen = highest reward, rejected = a random other: paper §4.1, K=2)
    pairs: str = "all"

    def __post_init__(self) -> None:
        _check(self.iterations >= 1, "schedule.iterations", f"must be >= 1, got {self.iterations}")
        for name in ("steps", "beta", "eta"):
            values = getattr(self, name)
            _check(values is None or len(values) == self.iterations, f"schedule.{name}",
                   f"needs one value per iteration ({self.iterations}), got {values}")  # fmt: skip
            _check(values is None or all(v > 0 for v in values), f"schedule.{name}", "values must be > 0")
        _check(self.pairs in ("all", "best_vs_random"), "schedule.pairs", "all or best_vs_random")


@dataclass
class OnlineConfig:
    """Online RPO (Alg. 2): each step samples ``trainer.global_batch_size`` prompts and K responses each."""

    # SFT steps on the prompt set's best responses before online training; None = 400 for the embedded
    # synthetic task (a tiny model starts from random weights) and 0 otherwise (start from your SFT model)
    sft_warmup_steps: Optional[int] = None
    # learning rate of those SFT steps (constant); None = 3e-3 for the embedded task, else optim.lr
    sft_warmup_lr: Optional[float] = None
    reference_on_cpu: bool = False  # keep the frozen reference in CPU memory between uses (GPU memory)

    def __post_init__(self) -> None:
        _check(self.sft_warmup_steps is None or self.sft_warmup_steps >= 0, "online.sft_warmup_steps",
               "must be >= 0")  # fmt: skip
        _check(self.sft_warmup_lr is None or self.sft_warmup_lr > 0, "online.sft_warmup_lr", "must be > 0")


@dataclass
class RPOConfig:
    """Top-level config of ``nemo-rpo-train``."""

    mode: str = "offline"
    k: int = 4  # responses per prompt
    exp_dir: str = "runs/default"
    debug: bool = False  # show full tracebacks on errors
    loss: LossConfig = field(default_factory=LossConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig())
    reward: RewardConfig = field(default_factory=lambda: RewardConfig())
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def __post_init__(self) -> None:
        _check(
            self.mode in ("offline", "online"), "mode", f"unsupported mode {self.mode!r} (offline or online)"
        )
        steps = self.schedule.steps
        _check(steps is None or sum(steps) == self.trainer.max_steps, "schedule.steps",
               f"sums to {sum(steps or [])} but trainer.max_steps is {self.trainer.max_steps}")  # fmt: skip
        _check(self.trainer.max_steps >= self.schedule.iterations, "schedule.iterations",
               "more iterations than trainer.max_steps")  # fmt: skip
        _check(self.schedule.pairs != "best_vs_random" or self.k == 2, "schedule.pairs",
               f"best_vs_random builds K=2 pairs; set k=2 (got k={self.k}) or schedule.pairs=all")  # fmt: skip
        from nemo_rpo.losses import LOSSES

        spec = LOSSES[self.loss.name]
        least = 1 if self.loss.name == "sft" and self.mode == "offline" else 2  # SFT data: one response
        _check(self.k >= least, "k", f"must be >= {least}, got {self.k}")
        _check(not (spec.pairwise and self.k != 2), "k", f"loss {spec.name} is pairwise: set k=2"
               + (f"; {spec.pairwise_note}" if spec.pairwise_note else ""))  # fmt: skip
        _check(not (spec.token_level and self.mode != "offline"), "loss.name",
               f"{spec.name} is token-level and runs offline only (online references give sequence log-probs)")  # fmt: skip
        heads = self.model.num_attention_heads
        groups = self.model.num_query_groups or heads
        _check(heads % self.parallel.tp == 0 and groups % self.parallel.tp == 0, "parallel.tp",
               f"tp={self.parallel.tp} must divide the attention heads ({heads}) and query groups ({groups})")  # fmt: skip
        _check(self.model.num_layers % self.parallel.pp == 0, "parallel.pp",
               f"pp={self.parallel.pp} must divide model.num_layers ({self.model.num_layers})")  # fmt: skip
        if self.model.init_from_hf is not None and self.model.vocab_size is not None:
            multiple = math.lcm(self.model.make_vocab_size_divisible_by, self.parallel.tp)
            _check(self.model.vocab_size % multiple == 0, "model.make_vocab_size_divisible_by",
                   f"vocab {self.model.vocab_size} would be padded to a multiple of {multiple}, and padding rows "
                   "change the Hugging Face log-probs; use a tp that divides the vocabulary")  # fmt: skip
        _check(self.trainer.global_batch_size % self.trainer.micro_batch_size == 0, "trainer.global_batch_size",
               "must be a multiple of micro_batch_size (times the data-parallel size)")  # fmt: skip


@dataclass
class GenerationConfig:
    """Sampling K responses per prompt from the policy (:mod:`nemo_rpo.generation`).

    ``temperature == 0`` is greedy decoding (top-k/top-p are then irrelevant). ``top_k = 0`` and
    ``top_p = 1.0`` switch those filters off. Generation stops at the tokenizer's ``eos`` or after
    ``max_new_tokens``; the longest prompt plus ``max_new_tokens`` must fit ``model.max_seq_len``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # 12 fits the bundled synthetic task exactly (answers of at most 11 characters, plus eos).
    max_new_tokens: int = 12
    # KV cache through megatron's StaticInferenceContext; False re-runs the whole prefix every step.
    use_kv_cache: bool = True

    def __post_init__(self) -> None:
        _check(math.isfinite(self.temperature) and self.temperature >= 0, "generation.temperature",
               f"must be >= 0 (0 = greedy), got {self.temperature}")  # fmt: skip
        _check(0.0 < self.top_p <= 1.0, "generation.top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, "generation.top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        _check(self.max_new_tokens >= 1, "generation.max_new_tokens",
               f"must be >= 1, got {self.max_new_tokens}")  # fmt: skip


REWARD_KINDS = ("judge", "http", "megatron")


@dataclass
class RewardConfig:
    """Where online rewards come from (:mod:`nemo_rpo.rewards`).

    ``judge``: a Python function named ``"pkg.module:function"`` taking ``(prompts, responses)`` and
    returning one float per response; the default scores the bundled synthetic task.
    ``http``: a reward service at ``url`` (``python -m nemo_rpo.rewards.server``), POST ``/score``.
    ``megatron``: a learnt Megatron reward model (configured by its own component).
    """

    kind: str = "judge"
    judge: str = "nemo_rpo.rewards.judges:synthetic_task_reward"
    url: Optional[str] = None  # http: e.g. http://127.0.0.1:8000 (the client posts to {url}/score)
    path: Optional[str] = None  # megatron: the reward model's run directory (nemo-rpo-train-rm exp_dir)
    timeout: float = 30.0  # http: seconds per request
    retries: int = 2  # http: further attempts after a connection failure or timeout

    def __post_init__(self) -> None:
        _check(self.kind in REWARD_KINDS, "reward.kind", f"unknown kind {self.kind!r}; choose one of "
               f"{', '.join(REWARD_KINDS)}")  # fmt: skip
        _check(self.kind != "judge" or ":" in self.judge, "reward.judge",
               f"expected 'pkg.module:function', got {self.judge!r}")  # fmt: skip
        _check(self.kind != "http" or bool(self.url), "reward.url", "required when kind=http")
        _check(self.kind != "megatron" or bool(self.path), "reward.path", "required when kind=megatron")
        _check(math.isfinite(self.timeout) and self.timeout > 0, "reward.timeout",
               f"must be > 0, got {self.timeout}")  # fmt: skip
        _check(self.retries >= 0, "reward.retries", f"must be >= 0, got {self.retries}")
