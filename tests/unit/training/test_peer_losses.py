"""The losses a migrated config selects equal the peers' formulas, written out here from their definitions.

NeMo-Aligner (``MegatronGPTDPOModel.loss_func``): with ``Δ = Σ (log π - log π_ref)`` over the chosen
response's tokens minus the same for the rejected one (the per-token mean instead of the sum when
``preference_average_log_probs``), and ``Δr = gt_reward_scale (r_c - r_r)``:
``dpo = -log σ(β Δ)``, ``ipo = (Δ - 1/(2β))²``, ``rpo_sq = (β Δ - Δr)²``,
``rpo_bwd_kl = KL(Bern(σ(Δr)) ‖ Bern(σ(β Δ)))``, ``rpo_fwd_kl = KL(Bern(σ(β Δ)) ‖ Bern(σ(Δr)))``.

TRL (``DPOTrainer``, f-divergence ``reverse_kl``): ``sigmoid = -log σ(β Δ)`` on summed log-ratios;
``sigmoid_norm`` and ``ipo`` divide each response's summed log-ratio by its token count first, then
``sigmoid_norm = -log σ(β Δ)`` (Tulu 3's length-normalized DPO) and ``ipo = (Δ - 1/(2β))²``.

Everything runs in float64 through :func:`preference_losses`, the training loss, on per-token inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nemo_rpo.config.schema import LossConfig
from nemo_rpo.data.batch import collate
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.training.loss_adapter import preference_losses

BETA, ETA = 0.3, 0.7


def _batch(lengths: list[tuple[int, int]], rewards: list[list[float]]):
    """A batch whose prompt i has responses of ``lengths[i]`` tokens; ids do not matter here."""
    examples = [
        PreferenceExample(i, [1, 2, 3], [[5] * lc, [6] * lr], r)
        for i, ((lc, lr), r) in enumerate(zip(lengths, rewards))
    ]
    return collate(examples, pad_id=0)


def _per_token(batch, values: list[list[float]], fill: float = 9.0) -> torch.Tensor:
    """``[B*R, T]`` float64 token log-probs: ``values[row]`` on the row's response tokens, ``fill`` elsewhere."""
    out = torch.full(batch.loss_mask.shape, fill, dtype=torch.float64)
    for row, vals in enumerate(values):
        out[row, batch.loss_mask[row] > 0] = torch.tensor(vals, dtype=torch.float64)
    return out


def _random_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = [
        (1 + int(torch.randint(6, (1,), generator=gen)), 1 + int(torch.randint(6, (1,), generator=gen)))
        for _ in range(5)
    ]
    rewards = torch.randn(5, 2, generator=gen, dtype=torch.float64).tolist()
    batch = _batch(lengths, rewards)
    batch.rewards = torch.tensor(rewards, dtype=torch.float64)
    n = [length for pair in lengths for length in pair]
    policy = [(-torch.rand(m, generator=gen, dtype=torch.float64) * 3).tolist() for m in n]
    ref = [(-torch.rand(m, generator=gen, dtype=torch.float64) * 3).tolist() for m in n]
    return batch, policy, ref


def _ours(name: str, batch, policy, ref, *, average: bool) -> torch.Tensor:
    token_logps = _per_token(batch, policy)
    ref_sums = torch.tensor([sum(v) for v in ref], dtype=torch.float64).view(-1, 2)  # the cached reference
    cfg = LossConfig(name=name, beta=BETA, eta=ETA, average_log_probs=average)
    losses, _ = preference_losses(token_logps=token_logps, batch=batch, ref_logps=ref_sums, loss=cfg)
    return losses


def _delta(policy, ref, *, average: bool) -> torch.Tensor:
    """NeMo-Aligner's reduction: the masked sum (or mean) of per-token ``log π - log π_ref``, chosen minus rejected."""
    ratios = [
        torch.tensor(p, dtype=torch.float64) - torch.tensor(r, dtype=torch.float64)
        for p, r in zip(policy, ref)
    ]
    reduced = torch.stack([x.mean() if average else x.sum() for x in ratios]).view(-1, 2)
    return reduced[:, 0] - reduced[:, 1]


def _bernoulli_kl(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    lp, lq = F.logsigmoid(torch.stack([p_logit, -p_logit])), F.logsigmoid(torch.stack([q_logit, -q_logit]))
    return (lp.exp() * (lp - lq)).sum(0)


def nemo_aligner_loss(preference_loss: str, delta: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    delta_r = ETA * (rewards[:, 0] - rewards[:, 1])
    return {
        "dpo": lambda: -F.logsigmoid(BETA * delta),
        "ipo": lambda: (delta - 1.0 / (2.0 * BETA)) ** 2,
        "rpo_sq": lambda: (BETA * delta - delta_r) ** 2,
        "rpo_bwd_kl": lambda: _bernoulli_kl(delta_r, BETA * delta),
        "rpo_fwd_kl": lambda: _bernoulli_kl(BETA * delta, delta_r),
    }[preference_loss]()


# NeMo-Aligner's model.dpo.preference_loss -> our loss (docs/migration.md); its rpo_sq is our distill_dpo.
NEMO_ALIGNER_NAMES = {
    "dpo": "dpo",
    "ipo": "ipo",
    "rpo_sq": "distill_dpo",
    "rpo_bwd_kl": "rpo_bwd",
    "rpo_fwd_kl": "rpo_fwd",
}


@pytest.mark.parametrize("average", [False, True], ids=["sum", "average_log_probs"])
@pytest.mark.parametrize("peer_name", list(NEMO_ALIGNER_NAMES))
def test_nemo_aligner_losses(peer_name, average):
    batch, policy, ref = _random_case()
    theirs = nemo_aligner_loss(peer_name, _delta(policy, ref, average=average), batch.rewards)
    ours = _ours(NEMO_ALIGNER_NAMES[peer_name], batch, policy, ref, average=average)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_our_rpo_sq_is_half_of_nemo_aligners():
    """The paper's sq is ``1/2 (β Δ - η Δr)²``; NeMo-Aligner's rpo_sq drops the 1/2 (= our distill_dpo)."""
    batch, policy, ref = _random_case()
    theirs = nemo_aligner_loss("rpo_sq", _delta(policy, ref, average=False), batch.rewards)
    torch.testing.assert_close(
        _ours("rpo_sq", batch, policy, ref, average=False), 0.5 * theirs, rtol=1e-6, atol=0
    )


def trl_loss(loss_type: str, batch, policy, ref) -> torch.Tensor:
    """TRL's per-sequence loss from summed log-ratios (``chosen_scores``) and completion token counts."""
    scores = torch.tensor([sum(p) - sum(r) for p, r in zip(policy, ref)], dtype=torch.float64).view(-1, 2)
    counts = batch.loss_mask.sum(-1).to(torch.float64).view(-1, 2)
    if loss_type == "sigmoid":
        return -F.logsigmoid(BETA * (scores[:, 0] - scores[:, 1]))
    avg = scores / counts.clamp(min=1.0)
    if loss_type == "sigmoid_norm":
        return -F.logsigmoid(BETA * (avg[:, 0] - avg[:, 1]))
    return (avg[:, 0] - avg[:, 1] - 1 / (2 * BETA)) ** 2  # ipo


# TRL's DPOConfig.loss_type -> our loss and loss.average_log_probs (docs/migration.md).
TRL_NAMES = {"sigmoid": ("dpo", False), "sigmoid_norm": ("dpo", True), "ipo": ("ipo", True)}


@pytest.mark.parametrize("loss_type", list(TRL_NAMES))
def test_trl_losses(loss_type):
    batch, policy, ref = _random_case(seed=1)
    name, average = TRL_NAMES[loss_type]
    torch.testing.assert_close(_ours(name, batch, policy, ref, average=average), trl_loss(loss_type, batch, policy, ref),
                               rtol=1e-6, atol=0)  # fmt: skip


def test_average_log_probs_hand_worked():
    """One prompt, β = 1. Chosen: 2 tokens, log π = [-1, -2], log π_ref = [-2, -2] (sums -3 and -4).
    Rejected: 1 token, log π = [-3], log π_ref = [-2].

    Summed: Δ = (-3 + 4) - (-3 + 2) = 2, DPO = log(1 + e^-2) = 0.126928011...
    Averaged: Δ = (-1.5 + 2) - (-3 + 2) = 1.5, DPO = log(1 + e^-1.5) = 0.201413277...
    """
    batch = _batch([(2, 1)], [[1.0, 0.0]])
    token_logps = _per_token(batch, [[-1.0, -2.0], [-3.0]])
    ref = torch.tensor([[-4.0, -2.0]], dtype=torch.float64)
    for average, expected in ((False, math.log1p(math.exp(-2.0))), (True, math.log1p(math.exp(-1.5)))):
        cfg = LossConfig(name="dpo", beta=1.0, average_log_probs=average)
        losses, _ = preference_losses(token_logps=token_logps, batch=batch, ref_logps=ref, loss=cfg)
        torch.testing.assert_close(losses, torch.tensor([expected], dtype=torch.float64), rtol=1e-12, atol=0)
    assert math.isclose(math.log1p(math.exp(-1.5)), 0.20141327798275246)
