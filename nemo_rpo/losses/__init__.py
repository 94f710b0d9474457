"""Pure-torch RPO losses (paper §3, Table 1). Imports only torch.

Public contract: :func:`rpo_loss` ``(*, policy_logps, ref_logps, rewards, metric, beta, eta) -> [B]``.
"""

from nemo_rpo.losses.distances import DISTANCES, bwd, bwd_bernoulli, bwd_categorical, fwd, sq, sqloo
from nemo_rpo.losses.logps import sequence_logps
from nemo_rpo.losses.presets import (
    ALIASES,
    PRESETS,
    PresetInfo,
    canonical_name,
    cdpo,
    distill_dpo,
    dpo,
    ipo,
    kto,
    preference_loss,
    sft_nll,
    simpo,
)
from nemo_rpo.losses.rpo import METRICS, implicit_rewards, rpo_loss
from nemo_rpo.losses.stats import pearson_from_moments, rpo_stats

__all__ = [
    "ALIASES", "DISTANCES", "METRICS", "PRESETS", "PresetInfo",
    "bwd", "bwd_bernoulli", "bwd_categorical", "canonical_name", "cdpo", "distill_dpo", "dpo", "fwd",
    "implicit_rewards", "ipo", "kto", "pearson_from_moments", "preference_loss", "rpo_loss", "rpo_stats",
    "sequence_logps", "sft_nll", "simpo", "sq", "sqloo",
]  # fmt: skip
