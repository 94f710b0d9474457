"""LoRA adapters (nemo_rpo.models.lora): exactness at the zero start, the reference switch, the merge, what
trains, what is saved. One process (TP=PP=1); the layouts are compared in tests/distributed/test_lora_layouts.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from nemo_rpo.config.schema import ConfigError, LoraConfig, ModelConfig, OptimConfig, ParallelConfig
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.models.hf_io import export_peft_adapter, merged_state
from nemo_rpo.models.lora import adapter_layers, adapters_disabled, is_adapter_key, merge_adapters_
from nemo_rpo.training.checkpoint import load_checkpoint, save_checkpoint
from nemo_rpo.training.optimizer import build_optimizer, wrap_ddp

VOCAB = 300


def _lora(cfg: ModelConfig, rank: int = 4, **kw) -> ModelConfig:
    return dataclasses.replace(cfg, lora=LoraConfig(rank=rank, **kw))


def _nll(model, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    model.eval()
    with torch.no_grad():
        return model(ids, pos, None, labels=ids)


def _randomise_b(model, seed: int = 0, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model):
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=gen) * std)


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank", -1, "model.lora.rank: must be >= 0"),
        ("alpha", 0.0, "model.lora.alpha: must be > 0"),
        ("dropout", 1.0, "model.lora.dropout: must be in [0, 1)"),
        ("target_modules", ["q_proj"], "model.lora.target_modules: unknown ['q_proj']"),
        ("target_modules", ["linear_qkv", "linear_qkv"], "model.lora.target_modules: names a module twice"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        LoraConfig(**{"rank": 4, field: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_lora_needs_the_local_spec() -> None:
    with pytest.raises(ConfigError, match=r"^model.lora.rank: LoRA adapters need the local spec"):
        ModelConfig(transformer_impl="transformer_engine", lora=LoraConfig(rank=8))


@pytest.mark.parametrize(
    "targets",
    [["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"], ["linear_qkv"], ["linear_fc1", "linear_fc2"]],
)
def test_zero_initialised_adapters_reproduce_the_base_logps_exactly(
    world1, tiny_config, ids, targets
) -> None:
    cfg = tiny_config()
    base = build_gpt_model(cfg, ParallelConfig(), VOCAB, init_seed=7)
    adapted = build_gpt_model(_lora(cfg, target_modules=targets), ParallelConfig(), VOCAB, init_seed=7)
    layers = adapter_layers(adapted)
    assert len(layers) == cfg.num_layers * len(targets)
    assert all(not layer.lora_b.any() and layer.lora_a.abs().sum() > 0 for layer in layers)
    # the base weights are the non-LoRA model's, bit for bit; and so are the log-probs
    base_state = base.state_dict()
    for name, tensor in adapted.state_dict().items():
        if isinstance(tensor, torch.Tensor) and not is_adapter_key(name):
            assert torch.equal(tensor, base_state[name]), name
    assert torch.equal(_nll(adapted, ids), _nll(base, ids))


def test_only_adapters_train_and_the_optimizer_state_scales_with_the_rank(world1, tiny_config) -> None:
    state_sizes = {}
    for rank in (4, 8):
        chunk = wrap_ddp(
            build_gpt_model(_lora(tiny_config(), rank), ParallelConfig(), VOCAB, init_seed=7),
            ParallelConfig(),
        )
        trainable = {n for n, p in chunk.module.named_parameters() if p.requires_grad}
        assert trainable and all(is_adapter_key(n) for n in trainable)
        optimizer, _ = build_optimizer([chunk], OptimConfig(), ParallelConfig(), 10)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        adapter_numel = sum(p.numel() for n, p in chunk.module.named_parameters() if is_adapter_key(n))
        assert sum(p.numel() for p in params) == adapter_numel
        state_sizes[rank] = adapter_numel
    assert state_sizes[8] == 2 * state_sizes[4]


def test_adapters_disabled_is_the_base_model_and_merging_keeps_the_outputs(world1, tiny_config, ids) -> None:
    cfg = tiny_config()
    base = _nll(build_gpt_model(cfg, ParallelConfig(), VOCAB, init_seed=7), ids)
    model = build_gpt_model(_lora(cfg), ParallelConfig(), VOCAB, init_seed=7)
    _randomise_b(model)
    adapted = _nll(model, ids)
    assert (adapted - base).abs().max() > 1e-2  # the adapters do change the model
    with adapters_disabled(model):
        assert torch.equal(_nll(model, ids), base)
    assert torch.equal(_nll(model, ids), adapted)  # switched back on
    merged_export = merged_state(model)
    merge_adapters_(model, seed=11)
    assert all(not layer.lora_b.any() for layer in adapter_layers(model))  # new adapters at their zero start
    torch.testing.assert_close(_nll(model, ids), adapted, rtol=0, atol=2e-5)
    with adapters_disabled(model):  # the reference is now the merged policy
        torch.testing.assert_close(_nll(model, ids), adapted, rtol=0, atol=2e-5)
    # the export's merged weights are the merge's
    for name, tensor in model.state_dict().items():
        if name in merged_export:
            assert torch.equal(merged_export[name], tensor), name


def test_checkpoint_holds_only_adapters_scales_with_rank_and_round_trips(
    world1, tiny_config, ids, tmp_path
) -> None:
    sizes, numels = {}, {}
    for rank in (4, 8):
        model = build_gpt_model(_lora(tiny_config(), rank), ParallelConfig(), VOCAB, init_seed=7)
        _randomise_b(model, seed=rank)
        path = save_checkpoint(tmp_path / f"r{rank}", 1, [model], None, None, {"lora_base": {"seed": 7}})
        sizes[rank] = sum(p.stat().st_size for p in path.glob("*.distcp"))
        numels[rank] = sum(p.numel() for n, p in model.named_parameters() if is_adapter_key(n))
        saved = set(
            torch.distributed.checkpoint.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        )
        assert saved and all(is_adapter_key(k) for k in saved), sorted(saved)[:4]
        fresh = build_gpt_model(_lora(tiny_config(), rank), ParallelConfig(), VOCAB, init_seed=7)
        load_checkpoint(path, [fresh], None, None, restore_rng=False)
        assert torch.equal(_nll(fresh, ids), _nll(model, ids))
    # the same tensors at twice the rank: the files grow by exactly the added fp32 values
    assert numels[8] == 2 * numels[4]
    assert sizes[8] - sizes[4] == 4 * numels[4], sizes
    full = build_gpt_model(tiny_config(), ParallelConfig(), VOCAB, init_seed=7)
    path = save_checkpoint(tmp_path / "full", 1, [full], None, None, {})
    assert sizes[8] < sum(p.stat().st_size for p in path.glob("*.distcp")) / 2


def test_peft_adapter_keys_and_shapes(world1, tiny_config, tmp_path) -> None:
    from safetensors.torch import load_file

    cfg = dataclasses.replace(_lora(tiny_config(), 4), vocab_size=VOCAB, num_query_groups=2)
    model = build_gpt_model(cfg, ParallelConfig(), VOCAB, init_seed=7)
    path, count = export_peft_adapter(tmp_path / "adapter", model, cfg, dtype="float32", base_model="base")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16.0
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    tensors = load_file(str(path / "adapter_model.safetensors"))
    assert count == len(tensors) == cfg.num_layers * 7 * 2
    d, h, ffn = cfg.hidden_size // cfg.num_attention_heads, cfg.hidden_size, 4 * cfg.hidden_size
    want = {"q_proj": (h, h), "k_proj": (h, 2 * d), "v_proj": (h, 2 * d), "o_proj": (h, h),
            "gate_proj": (h, ffn), "up_proj": (h, ffn), "down_proj": (ffn, h)}  # fmt: skip
    for name, (fan_in, fan_out) in want.items():
        group = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        prefix = f"base_model.model.model.layers.1.{group}.{name}"
        assert tensors[f"{prefix}.lora_A.weight"].shape == (4, fan_in)
        assert tensors[f"{prefix}.lora_B.weight"].shape == (fan_out, 4)


def test_base_weights_load_from_a_full_checkpoint_and_an_adapter_checkpoint_is_refused(
    world1, tiny_config, ids, tmp_path
) -> None:
    """``checkpoint.init_from`` of a LoRA run: ``part="base"`` reads a whole model's checkpoint under the
    adapters; a checkpoint of adapters alone cannot stand in for weights (one line says what to do)."""
    from nemo_rpo.data.errors import DataError

    full = build_gpt_model(tiny_config(), ParallelConfig(), VOCAB, init_seed=7)
    path = save_checkpoint(tmp_path / "full", 1, [full], None, None, {})
    adapted = build_gpt_model(
        _lora(tiny_config()), ParallelConfig(), VOCAB, init_seed=99
    )  # other base weights
    assert not torch.equal(_nll(adapted, ids), _nll(full, ids))
    load_checkpoint(path, [adapted], None, None, restore_rng=False, part="base")
    assert torch.equal(_nll(adapted, ids), _nll(full, ids))  # B = 0: the loaded base model exactly
    lora_path = save_checkpoint(tmp_path / "lora", 1, [adapted], None, None, {})
    with pytest.raises(DataError, match="holds LoRA adapters only"):
        load_checkpoint(lora_path, [adapted], None, None, restore_rng=False, part="base")
