"""nemo-rpo: Reward-aware Preference Optimization on Megatron GPT models.

The Python API: :class:`RPOModel` and the component configs it is built from.

    from nemo_rpo import LossConfig, ModelConfig, OptimConfig, ParallelConfig, RPOModel

Imported lazily: ``import nemo_rpo`` loads neither torch nor megatron (the CLI must prepare megatron's
import first, which :mod:`nemo_rpo.model` does on its own).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GenerationConfig", "LoraConfig", "LossConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
           "RPOModel", "TokenizerConfig"]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "RPOModel":
        from nemo_rpo.model import RPOModel

        return RPOModel
    if name in __all__:
        from nemo_rpo.config import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'nemo_rpo' has no attribute {name!r}")
