"""Typed configuration of ``nemo-rpo-train-rm`` (reward-model training); composed from ``conf/train_rm.yaml``.

Reuses the policy's component schemas, so a reward model and a policy of one ``model`` preset have the
same trunk. Like :mod:`nemo_rpo.config.schema`, this module imports nothing but the schema.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from nemo_rpo.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrainerConfig,
    _check,
)

__all__ = ["RM_OBJECTIVES", "RMTrainConfig", "rm_config_from_dict"]

RM_OBJECTIVES = ("bradley_terry", "regression")


def _rm_trainer() -> TrainerConfig:
    # 100 steps of 32 prompts (~6 epochs of the 512-prompt default data): the tiny RM in well under 2 min.
    return TrainerConfig(max_steps=100)


def _rm_optim() -> OptimConfig:
    # The policy's 3e-3 makes the RM's scores swing: last-10-step train accuracy 0.65 vs 0.76 at 1e-3
    # (held-out pair accuracy about the same, 0.67 vs 0.66; measured on the default data).
    return OptimConfig(lr=1e-3)


@dataclass
class RMTrainConfig:
    """Top-level config of ``nemo-rpo-train-rm``.

    ``objective``: ``bradley_terry`` maximises ``log sigmoid(s_i - s_j)`` over every ordered pair of a
    prompt's K responses (any data format); ``regression`` fits the scores to the explicit rewards with
    a squared error (native / nemo_aligner data). ``k`` is the responses per prompt of the data (2 for
    the pairwise formats). ``data.train_path=null`` trains on the bundled synthetic dataset.
    """

    objective: str = "bradley_terry"
    k: int = 4
    exp_dir: str = "runs/rm"
    debug: bool = False  # show full tracebacks on errors
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_rm_optim)
    trainer: TrainerConfig = field(default_factory=_rm_trainer)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        _check(self.objective in RM_OBJECTIVES, "objective",
               f"unknown objective {self.objective!r}; choose one of {', '.join(RM_OBJECTIVES)}")  # fmt: skip
        _check(self.k >= 2, "k", f"must be >= 2, got {self.k}")
        heads = self.model.num_attention_heads
        groups = self.model.num_query_groups or heads
        _check(heads % self.parallel.tp == 0 and groups % self.parallel.tp == 0, "parallel.tp",
               f"tp={self.parallel.tp} must divide the attention heads ({heads}) and query groups ({groups})")  # fmt: skip
        _check(self.model.num_layers % self.parallel.pp == 0, "parallel.pp",
               f"pp={self.parallel.pp} must divide model.num_layers ({self.model.num_layers})")  # fmt: skip
        _check(self.trainer.global_batch_size % self.trainer.micro_batch_size == 0, "trainer.global_batch_size",
               "must be a multiple of micro_batch_size (times the data-parallel size)")  # fmt: skip


def _build(cls: type, values: Any, where: str) -> Any:
    """A dataclass from a plain nested dict, unknown keys rejected, nested dataclasses built recursively."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown keys {unknown}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        kwargs[name] = _build(hint, value, path) if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)


def rm_config_from_dict(values: dict[str, Any]) -> RMTrainConfig:
    """An ``RMTrainConfig`` from a plain dict (e.g. a run's saved ``config.yaml``), checks included.

    Missing keys take the schema defaults; unknown keys raise :class:`ConfigError`.
    """
    return _build(RMTrainConfig, values, "")
