"""Online sqloo with eta = 1 on the Megatron model is RLOO (paper §3.4), checked on parameter gradients.

Our path: GPTModel's per-token NLL from vocab-parallel logits -> the training loss adapter (the function
``train_step``'s loss_func calls) with ``rpo_sqloo``. Independent path: a plain log-softmax of the same
model's logits, and the REINFORCE leave-one-out surrogate with the KL-penalised reward
``R_k = r_k - beta * log(pi/pi_ref)(y_k)`` (detached): ``-(1/K) sum_k (R_k - mean_{j != k} R_j) log pi(y_k)``.
By Eq. 6, d sqloo / d log pi(y_k) = beta K/(K-1) (a_hat_k - b_hat_k) = -beta K/(K-1) (R_k - baseline_k),
so the two gradients agree up to the positive factor beta K^2/(K-1) for every parameter.
"""

from __future__ import annotations

import torch

from nemo_rpo.config.schema import LossConfig, ParallelConfig
from nemo_rpo.data.batch import collate
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.training.loss_adapter import preference_losses

B, K, BETA, VOCAB = 3, 4, 0.2, 100


def _samples(gen: torch.Generator) -> list[PreferenceExample]:
    def ids(n: int) -> list[int]:
        return torch.randint(0, VOCAB, (n,), generator=gen).tolist()

    return [
        PreferenceExample(
            index=b,
            prompt_ids=ids(5),
            response_ids=[ids(3 + (b + k) % 4) for k in range(K)],
            rewards=torch.rand(K, generator=gen).tolist(),
        )  # fmt: skip
        for b in range(B)
    ]


def test_online_sqloo_eta1_gradient_is_rloo(world1: ParallelInfo, tiny_config) -> None:
    gen = torch.Generator().manual_seed(0)
    batch = collate(_samples(gen), pad_id=0)
    cfg = tiny_config(transformer_impl="local", max_seq_len=16)
    model = build_gpt_model(cfg, ParallelConfig(), vocab_size=VOCAB, init_seed=1)
    ref_model = build_gpt_model(cfg, ParallelConfig(), vocab_size=VOCAB, init_seed=2)  # pi_ref != pi
    params = list(model.parameters())

    with torch.no_grad():
        ref_nll = ref_model(batch.input_ids, batch.position_ids, None, labels=batch.labels)
        ref_logps = (-ref_nll * batch.loss_mask).sum(-1).view(B, K)

    # Ours: the training path's loss on megatron's vocab-parallel NLL.
    nll = model(batch.input_ids, batch.position_ids, None, labels=batch.labels)
    loss_cfg = LossConfig(name="rpo_sqloo", beta=BETA, eta=1.0)
    losses, _ = preference_losses(token_logps=-nll.float(), batch=batch, ref_logps=ref_logps, loss=loss_cfg)
    ours = torch.autograd.grad(losses.mean(), params, allow_unused=True)

    # Independent: REINFORCE with a leave-one-out baseline on the KL-penalised reward.
    logits = model(batch.input_ids, batch.position_ids, None)  # [b, s, 128]: padded vocab included
    token_logps = torch.log_softmax(logits.float(), -1).gather(-1, batch.labels.unsqueeze(-1)).squeeze(-1)
    seq = (token_logps * batch.loss_mask).sum(-1).view(B, K)
    reward = batch.rewards - BETA * (seq.detach() - ref_logps)
    baseline = (reward.sum(-1, keepdim=True) - reward) / (K - 1)
    surrogate = -((reward - baseline) * seq).mean(-1)  # -(1/K) sum_k
    rloo = torch.autograd.grad(surrogate.mean(), params, allow_unused=True)

    scale = BETA * K**2 / (K - 1)
    compared = 0
    for g_ours, g_rloo in zip(ours, rloo):
        if g_rloo is None:
            assert g_ours is None or not g_ours.any()
            continue
        torch.testing.assert_close(g_ours, scale * g_rloo, atol=1e-6, rtol=1e-4)
        compared += int(g_rloo.abs().max() > 0)
    assert compared >= len(params) - 2  # nearly every parameter receives a non-zero gradient
