"""On CPU, megatron's torch-AdamW fallback runs torch's fused kernel, with the same updates."""

from __future__ import annotations

import pytest
import torch

from nemo_rpo.algorithms.common import microbatches, table_lookup
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.training import optimizer as optimizer_module
from nemo_rpo.training.step import train_step


def _adam_groups(optimizer) -> list[dict]:
    return [
        g for opt in getattr(optimizer, "chained_optimizers", [optimizer]) for g in opt.optimizer.param_groups
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU only")
def test_fused_cpu_adam_matches_the_unfused_update(world1, monkeypatch):
    from nemo_rpo.training.builder import build_policy

    cfg, info = world1
    examples = [PreferenceExample(i, [1, 5 + i, 7], [[8, 9, 2], [10, 2], [11, 12, 2], [13, 2]], [1.0, 0.5, 0.2, 0.0])
                for i in range(2)]  # fmt: skip
    micro = microbatches(examples, 2, pad_id=0, device=info.device)
    ref = torch.zeros(2, 4)

    def run():
        torch.manual_seed(0)
        model, optimizer, scheduler = build_policy(cfg, vocab_size=64)
        for _ in range(3):
            result = train_step(model, optimizer, scheduler, micro, table_lookup(ref), cfg.loss)
            assert not result.skipped
        return [p.detach().clone() for p in model[0].parameters()], _adam_groups(optimizer)

    fused_params, fused_groups = run()
    assert fused_groups and all(g["fused"] is True for g in fused_groups)
    monkeypatch.setattr(optimizer_module, "_use_fused_cpu_adam", lambda optimizer: None)
    plain_params, plain_groups = run()
    assert not any(g["fused"] for g in plain_groups)
    moved = max((a - b).abs().max().item() for a, b in zip(plain_params, fused_params))
    assert moved < 1e-6, moved
    # and the updates were real: the weights left their initial values
    torch.manual_seed(0)
    init = [p.detach().clone() for p in build_policy(cfg, vocab_size=64)[0][0].parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(init, fused_params)) > 1e-4
