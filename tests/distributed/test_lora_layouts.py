"""LoRA through the whole CLI stack under torchrun: TP=2 and PP=2 give the TP=1 trajectory, as the full model
does (tests/distributed/test_cli_layouts.py, whose harness this reuses): per-step loss and global gradient
norm from metrics.jsonl, within the same tolerance. Column-parallel B and row-parallel A are split across
the TP ranks, so a wrong all-reduce or a replicated adapter counted twice in the gradient norm shows here."""

import pytest
from test_cli_layouts import _assert_same, _run

pytestmark = pytest.mark.distributed

LORA = ["model.lora.rank=4", "model.lora.alpha=8", "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def lora_baseline(tmp_path_factory):
    return _run(1, tmp_path_factory.mktemp("lora_tp1"), *LORA)


def test_lora_trains_and_the_base_is_frozen(lora_baseline, tmp_path_factory) -> None:
    full = _run(1, tmp_path_factory.mktemp("full_tp1"), "trainer.max_steps=4")
    # step 1 is the base model's (B = 0): the same loss as full fine-tuning; then the two part ways
    assert lora_baseline[0]["loss"] == full[0]["loss"]
    assert lora_baseline[-1]["loss"] != full[-1]["loss"]
    assert lora_baseline[-1]["grad_norm"] < full[-1]["grad_norm"]  # fewer parameters carry gradient


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"]])
def test_lora_layouts_match_tp1(lora_baseline, tmp_path, layout) -> None:
    rows = _run(2, tmp_path, *LORA, *layout)
    _assert_same(rows, lora_baseline, 4)
