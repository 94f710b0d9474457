"""``nemo-rpo-loss-demo``: the RPO losses on one hand-made K=4 example, and a tiny tabular policy
trained with each metric until its implicit rewards match the explicit ones.

Runs on CPU in about a second: ``nemo-rpo-loss-demo [--beta 0.5] [--eta 1.0] [--steps 300]``.
"""

from __future__ import annotations

import argparse

import torch

from nemo_rpo.losses import implicit_rewards, rpo_loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    rewards = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    ref_logps = torch.tensor([[-12.0, -10.0, -11.0, -9.0]])
    print(f"K=4 responses, rewards r* = {rewards.tolist()[0]}, beta={args.beta}, eta={args.eta}")
    print(
        f"{'metric':8s} {'loss@init':>10s} {'loss@end':>10s}  implicit rewards at the end (shifted to mean 0)"
    )
    for metric in ("sqloo", "bwd", "fwd"):
        # A free log-probability per response, initialised at the reference (Alg. 1, line 1).
        policy_logps = ref_logps.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([policy_logps], lr=0.05)
        first = None
        for _ in range(args.steps):
            loss = rpo_loss(
                policy_logps=policy_logps,
                ref_logps=ref_logps,
                rewards=rewards,
                metric=metric,
                beta=args.beta,
                eta=args.eta,
            )
            first = loss.item() if first is None else first
            optimizer.zero_grad()
            loss.sum().backward()
            optimizer.step()
        implicit = implicit_rewards(policy_logps=policy_logps.detach(), ref_logps=ref_logps, beta=args.beta)[
            0
        ]
        implicit = implicit - implicit.mean()
        print(f"{metric:8s} {first:10.4f} {loss.item():10.2e}  {[round(v, 3) for v in implicit.tolist()]}")
    print(
        f"target eta*r* (shifted to mean 0): {[round(v, 3) for v in (args.eta * (rewards[0] - rewards[0].mean())).tolist()]}"
    )


if __name__ == "__main__":
    main()
