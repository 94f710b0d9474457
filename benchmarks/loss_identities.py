"""Measured errors of the listwise and token-level loss identities (issue 21), in float64.

The tests in tests/unit/losses/ assert each identity to a tolerance; this prints the largest error
actually measured over random batches, for the record:

    python benchmarks/loss_identities.py [--batches 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import math

import torch

from nemo_rpo.losses.listwise import lipo_lambda, nca, plackett_luce
from nemo_rpo.losses.presets import dpo
from nemo_rpo.losses.rpo import rpo_loss
from nemo_rpo.losses.token_level import token_rpo_loss

BETA, ETA = 0.1, 10.0
LISTWISE = {
    "plackett_luce": lambda pol, ref, r: plackett_luce(policy_logps=pol, ref_logps=ref, rewards=r, beta=BETA),
    "lipo_lambda": lambda pol, ref, r: lipo_lambda(
        policy_logps=pol, ref_logps=ref, rewards=r, beta=BETA, eta=1.0
    ),
    "nca": lambda pol, ref, r: nca(policy_logps=pol, ref_logps=ref, rewards=r, beta=BETA, eta=ETA),
}


def _logps(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 - 20


def _loss_and_grad(fn, pol: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:
    pol = pol.clone().requires_grad_(True)
    loss = fn(pol, *args)
    (grad,) = torch.autograd.grad(loss.sum(), pol)
    return loss.detach(), grad


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _token_level(pol, ref, r, mask, metric):  # noqa: ANN001, ANN202 - the loss of one metric, decay 0
    return token_rpo_loss(policy_logps=pol, ref_logps=ref, rewards=r, token_mask=mask, metric=metric,
                          beta=BETA, eta=ETA, token_decay=0.0)  # fmt: skip


def _sequence_level(pol, ref, r, mask, metric):  # noqa: ANN001, ANN202 - the same on summed log-probs
    return rpo_loss(policy_logps=(pol * mask).sum(-1), ref_logps=(ref * mask).sum(-1), rewards=r,
                    metric=metric, beta=BETA, eta=ETA)  # fmt: skip


def measure(batches: int, seed: int) -> dict[str, float]:
    gen, worst = torch.Generator().manual_seed(seed), {}

    def record(name: str, err: float) -> None:
        worst[name] = max(worst.get(name, 0.0), err)

    for _ in range(batches):
        # K=2: Plackett-Luce is DPO; LiPO-lambda is |2^psi_1 - 2^psi_2| (1 - 1/log2 3) x DPO (relative error).
        pol, ref = _logps(gen, 64, 2), _logps(gen, 64, 2)
        r = torch.rand(64, 2, generator=gen, dtype=torch.float64).sort(dim=-1, descending=True).values
        d = dpo(policy_logps=pol, ref_logps=ref, beta=BETA)
        record("plackett_luce K=2 = dpo", _err(LISTWISE["plackett_luce"](pol, ref, r), d))
        weight = (torch.exp2(ETA * r[:, 0]) - torch.exp2(ETA * r[:, 1])).abs() * (1 - 1 / math.log2(3))
        lipo = lipo_lambda(policy_logps=pol, ref_logps=ref, rewards=r, beta=BETA, eta=ETA)
        record(
            "lipo_lambda K=2 = weight x dpo (relative)",
            ((lipo - weight * d) / (weight * d)).abs().max().item(),
        )
        # K=4: the order of the responses and (except NCA) a constant per prompt change nothing.
        pol, ref = _logps(gen, 32, 4), _logps(gen, 32, 4)
        r = torch.rand(32, 4, generator=gen, dtype=torch.float64)
        perm = torch.randperm(4, generator=gen)
        shift = torch.randn(32, 1, generator=gen, dtype=torch.float64) * 5
        for name, fn in LISTWISE.items():
            loss, grad = _loss_and_grad(fn, pol, ref, r)
            loss_p, grad_p = _loss_and_grad(fn, pol[:, perm], ref[:, perm], r[:, perm])
            record(f"{name} K=4 permutation (loss)", _err(loss, loss_p))
            record(f"{name} K=4 permutation (gradient)", _err(grad[:, perm], grad_p))
            if name != "nca":  # NCA fits absolute implicit rewards: no log Z invariance, by design
                record(f"{name} K=4 log Z shift (loss)", _err(loss, fn(pol + shift, ref, r)))
        # Token level with token_decay=0 is sequence-level RPO: values and per-token gradients.
        tok, tok_ref = _logps(gen, 16, 4, 7) / 10, _logps(gen, 16, 4, 7) / 10
        mask = torch.arange(7) < torch.randint(1, 8, (16, 4), generator=gen).unsqueeze(-1)
        r = torch.rand(16, 4, generator=gen, dtype=torch.float64)
        for metric in ("bwd", "sqloo"):
            loss_t, grad_t = _loss_and_grad(_token_level, tok, tok_ref, r, mask, metric)
            loss_s, grad_s = _loss_and_grad(_sequence_level, tok, tok_ref, r, mask, metric)
            record(f"rpo_token_{metric} decay 0 = rpo_{metric} (loss)", _err(loss_t, loss_s))
            record(f"rpo_token_{metric} decay 0 = rpo_{metric} (gradient)", _err(grad_t, grad_s))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, err in measure(args.batches, args.seed).items():
        print(f"{name:48s} max error {err:.1e}")


if __name__ == "__main__":
    main()
