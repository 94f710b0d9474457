"""Pure-torch RPO losses (paper §3, Table 1). Imports only torch.

Public contract: :func:`rpo_loss` ``(*, policy_logps, ref_logps, rewards, metric, beta, eta) -> [B]``;
every named loss is a :class:`LossSpec` in :data:`LOSSES`, run by :func:`preference_loss`.
"""

from nemo_rpo.losses.distances import DISTANCES, bwd, bwd_bernoulli, bwd_categorical, fwd, sq, sqloo
from nemo_rpo.losses.listwise import lipo_lambda, nca, plackett_luce
from nemo_rpo.losses.logps import sequence_logps
from nemo_rpo.losses.presets import cdpo, distill_dpo, dpo, ipo, kto, sft_nll, simpo
from nemo_rpo.losses.registry import (
    ALIASES,
    LOSSES,
    LossSpec,
    canonical_name,
    get_loss,
    preference_loss,
    register_loss,
)
from nemo_rpo.losses.rpo import METRICS, implicit_rewards, rpo_loss
from nemo_rpo.losses.stats import pearson_from_moments, rpo_stats
from nemo_rpo.losses.token_level import token_rpo_loss

__all__ = [
    "ALIASES", "DISTANCES", "LOSSES", "METRICS", "LossSpec",
    "bwd", "bwd_bernoulli", "bwd_categorical", "canonical_name", "cdpo", "distill_dpo", "dpo", "fwd",
    "get_loss", "implicit_rewards", "ipo", "kto", "lipo_lambda", "nca", "pearson_from_moments",
    "plackett_luce", "preference_loss", "register_loss", "rpo_loss", "rpo_stats", "sequence_logps",
    "sft_nll", "simpo", "sq", "sqloo", "token_rpo_loss",
]  # fmt: skip
