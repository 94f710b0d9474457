"""The training loss feeds token-level RPO per-token log-probs: with ``token_decay=0`` it equals ``rpo_bwd``
on the same micro-batch (responses of different lengths and prompts, padding in between)."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from nemo_rpo.config.schema import LossConfig
from nemo_rpo.data.batch import collate
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.losses.logps import response_token_logps
from nemo_rpo.training.loss_adapter import preference_losses


def test_token_level_loss_through_the_adapter_reduces_to_rpo_bwd():
    gen = torch.Generator().manual_seed(0)
    lengths = [[3, 1, 5, 2], [4, 4, 1, 6]]
    examples = [
        PreferenceExample(i, [1] * (2 + i), [[7] * n for n in row], torch.rand(4, generator=gen).tolist())
        for i, row in enumerate(lengths)
    ]
    batch = collate(examples, pad_id=0)
    batch.rewards = batch.rewards.double()
    token_logps = -torch.rand(batch.loss_mask.shape, generator=gen, dtype=torch.float64) * 3
    ref_tokens = -torch.rand(batch.loss_mask.shape, generator=gen, dtype=torch.float64) * 3
    width = 6  # the longest response: the reference table's width
    ref_table = response_token_logps(token_logps=ref_tokens, mask=batch.loss_mask, width=width).view(
        2, 4, width
    )
    ref_sums = (ref_tokens * batch.loss_mask).sum(-1).view(2, 4)

    seq, _ = preference_losses(
        token_logps=token_logps, batch=batch, ref_logps=ref_sums, loss=LossConfig(name="rpo_bwd", eta=10.0)
    )
    tok, report = preference_losses(
        token_logps=token_logps,
        batch=batch,
        ref_logps=ref_table,
        loss=LossConfig(name="rpo_token_bwd", eta=10.0, token_decay=0.0),
    )
    assert_close(tok, seq, rtol=1e-12, atol=1e-12)
    spread, _ = preference_losses(
        token_logps=token_logps,
        batch=batch,
        ref_logps=ref_table,
        loss=LossConfig(name="rpo_token_bwd", eta=10.0, token_decay=1.0),
    )
    assert (spread - seq).abs().max() > 1e-3  # the depths before T count
    assert torch.isfinite(report["report"]).all()
