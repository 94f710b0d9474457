import numpy as np
import torch
from torch.testing import assert_close

from nemo_rpo.losses import pearson_from_moments, rpo_stats


def test_ranking_agreement_hand_worked():
    """rewards [3, 1, 2]: pairs (0,1) r0>r1, (0,2) r0>r2, (1,2) r1<r2.
    implicit [0.5, 0.1, 0.0] (beta=1, ref=0): 0.5>0.1 yes, 0.5>0.0 yes, 0.1<0.0 no -> 2 of 3."""
    stats = rpo_stats(
        policy_logps=torch.tensor([[0.5, 0.1, 0.0]]),
        ref_logps=torch.zeros(1, 3),
        rewards=torch.tensor([[3.0, 1.0, 2.0]]),
        beta=1.0,
        eta=1.0,
    )
    assert_close(stats["acc_sum"], torch.tensor([2.0]))
    assert_close(stats["acc_count"], torch.tensor([3.0]))


def test_correlation_matches_numpy_on_centered_values():
    torch.manual_seed(0)
    policy, ref, rewards = torch.randn(10, 4), torch.randn(10, 4), torch.randn(10, 4)
    stats = rpo_stats(policy_logps=policy, ref_logps=ref, rewards=rewards, beta=0.5, eta=2.0)
    x = 0.5 * (policy - ref)
    y = 2.0 * rewards
    x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    expected = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
    # Summing moments of two halves equals the moments of the whole batch.
    first = rpo_stats(policy_logps=policy[:5], ref_logps=ref[:5], rewards=rewards[:5], beta=0.5, eta=2.0)[
        "moments"
    ]
    second = rpo_stats(policy_logps=policy[5:], ref_logps=ref[5:], rewards=rewards[5:], beta=0.5, eta=2.0)[
        "moments"
    ]
    assert abs(pearson_from_moments(stats["moments"]) - expected) < 1e-5
    assert abs(pearson_from_moments(first + second) - expected) < 1e-5


def test_target_and_policy_probs():
    stats = rpo_stats(
        policy_logps=torch.tensor([[0.0, 0.0]]),
        ref_logps=torch.zeros(1, 2),
        rewards=torch.tensor([[float("inf"), 0.0]]),
        beta=1.0,
        eta=1.0,
    )
    assert_close(stats["target_probs"], torch.tensor([[1.0, 0.0]]))
    assert_close(stats["policy_probs"], torch.tensor([[0.5, 0.5]]))
