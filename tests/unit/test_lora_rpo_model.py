"""``RPOModel`` with LoRA adapters: the base stays, the adapters train, save/load round-trips them."""

from __future__ import annotations

import json

import torch
from test_rpo_model_api import _examples, _model

from nemo_rpo.config.schema import LoraConfig, ModelConfig
from nemo_rpo.models.lora import adapters_disabled, is_adapter_key


def _lora_model(seed: int = 0):
    from nemo_rpo import RPOModel

    plain = _model(seed=seed)
    cfg = ModelConfig(hidden_size=32, ffn_hidden_size=64, max_seq_len=64, lora=LoraConfig(rank=4))
    lora = RPOModel(cfg, None, plain.optim, plain.loss, max_steps=10, micro_batch_size=4, seed=seed)
    return plain, lora


def test_lora_rpo_model_trains_adapters_and_round_trips(tmp_path, one_process) -> None:
    plain, model = _lora_model()
    examples = _examples(model)
    base = plain.reference_logps(examples)
    ref = model.reference_logps(examples)
    assert torch.equal(ref, base)  # B = 0: the base model's log-probs exactly
    frozen = {
        n: p.detach().clone() for n, p in model.chunks[0].module.named_parameters() if not is_adapter_key(n)
    }
    for _ in range(2):
        model.train_step(examples[:8], ref_logps=ref)
    assert all(torch.equal(p, frozen[n]) for n, p in model.chunks[0].module.named_parameters() if n in frozen)
    trained = model.reference_logps(examples)
    assert not torch.equal(trained, base)
    with adapters_disabled(model.chunks):
        assert torch.equal(model.reference_logps(examples), base)
    path = model.save(tmp_path / "run")
    assert json.loads((path / "extra.json").read_text())["lora_base"] == {"seed": 0}
    assert json.loads((path / "COMPLETE").read_text())["part"] == "adapters"
    _, fresh = _lora_model()
    assert fresh.load(tmp_path / "run") == 2
    assert torch.equal(fresh.reference_logps(examples), trained)
