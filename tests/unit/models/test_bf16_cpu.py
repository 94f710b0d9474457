"""``model.precision=bf16`` on CPU (issue 20, item 6): bf16 weights with fp32 master weights where the CPU
multiplies bf16 in hardware (AVX-512-BF16 / AMX); elsewhere one line saying so, and fp32.

The training test runs bf16 whatever the CPU (torch emulates bf16 products where the hardware lacks them),
so it checks the numbers, not the speed (``benchmarks/bench_offline.py --bf16`` measures that).
"""

from __future__ import annotations

import logging

import pytest
import torch

from nemo_rpo.config.schema import (
    LossConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RPOConfig,
    TrainerConfig,
)
from nemo_rpo.data.batch import collate
from nemo_rpo.data.preference import PreferenceExample
from nemo_rpo.distributed import cpu_support
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_transformer_config, effective_precision

MESSAGE = "lacks bf16 matmul support"


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bf16_falls_back_to_fp32_in_one_line_where_the_cpu_lacks_it(
    monkeypatch, caplog, has_bf16: bool
) -> None:
    monkeypatch.setattr(cpu_support, "cpu_has_bf16_matmul", lambda: has_bf16)
    with caplog.at_level(logging.WARNING, logger="nemo_rpo.models.gpt"):
        config = build_transformer_config(
            ModelConfig(precision="bf16", transformer_impl="local"), ParallelConfig()
        )
        assert effective_precision(ModelConfig(precision="fp32")) == "fp32"
    messages = [r.getMessage() for r in caplog.records if MESSAGE in r.getMessage()]
    if has_bf16:
        assert config.bf16 and config.params_dtype == torch.bfloat16 and not messages
    else:
        assert not config.bf16 and config.params_dtype == torch.float32
        assert len(messages) == 1 and "\n" not in messages[0] and "training in fp32" in messages[0]


def test_cpu_flag_detection_reads_proc_cpuinfo(monkeypatch, tmp_path) -> None:
    import builtins

    real_open = builtins.open
    for flags, expected in (
        ("fpu avx2 avx512f", False),
        ("fpu avx512f avx512_bf16", True),
        ("amx_bf16 amx_tile", True),
    ):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(
            builtins,
            "open",
            lambda path, *a, cpuinfo=cpuinfo, **k: real_open(
                cpuinfo if path == "/proc/cpuinfo" else path, *a, **k
            ),
        )
        assert cpu_support.cpu_has_bf16_matmul() is expected, flags
        monkeypatch.setattr(builtins, "open", real_open)


def test_bf16_policy_trains_with_fp32_master_weights(world1: ParallelInfo, monkeypatch) -> None:
    from nemo_rpo.training.builder import build_policy
    from nemo_rpo.training.step import sequence_logps, train_step

    monkeypatch.setattr(cpu_support, "cpu_has_bf16_matmul", lambda: True)
    cfg = RPOConfig(
        k=2,
        loss=LossConfig(name="dpo"),
        model=ModelConfig(hidden_size=32, max_seq_len=16, precision="bf16", transformer_impl="local"),
        optim=OptimConfig(lr=3e-3, warmup_steps=0),
        trainer=TrainerConfig(global_batch_size=4, micro_batch_size=4),
    )
    model, optimizer, scheduler = build_policy(cfg, vocab_size=64)
    assert {p.dtype for p in model[0].parameters()} == {torch.bfloat16}
    masters = [p for o in optimizer.chained_optimizers for g in o.fp32_from_float16_groups for p in g]
    assert masters and {p.dtype for p in masters} == {torch.float32}

    gen = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, 64, (n,), generator=gen).tolist()  # noqa: E731
    examples = [PreferenceExample(i, ids(4), [ids(5), ids(5)], [1.0, 0.0]) for i in range(4)]
    micro = [collate(examples, 0, pad_to=16)]
    ref = sequence_logps(model, micro, len(examples))
    losses = []
    for _ in range(8):
        result = train_step(model, optimizer, scheduler, micro, lambda b: ref[b.index], cfg.loss)
        assert not result.skipped
        losses.append(result.report["loss_sum"] / result.report["num_prompts"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.05, losses
