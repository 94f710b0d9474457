"""LoRA through the whole CLI stack under torchrun: TP=2 and PP=2 give the TP=1 trajectory, as the full model
does (tests/distributed/test_cli_layouts.py, whose harness this reuses): per-step loss and global gradient
norm from metrics.jsonl, within the same tolerance. Column-parallel B and row-parallel A are split across
the TP ranks, so a wrong all-reduce or a replicated adapter counted twice in the gradient norm shows here."""

import pytest
from test_cli_layouts import _assert_same, _launch, _run

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


@pytest.mark.parametrize(
    "layout",
    [["parallel.tp=2"], ["parallel.pp=2"], ["parallel.use_distributed_optimizer=true"]],  # the last: DP=2
)
def test_lora_layouts_match_tp1(lora_baseline, tmp_path, layout) -> None:
    rows = _run(2, tmp_path, *LORA, *layout)
    _assert_same(rows, lora_baseline, 4)


def test_lora_save_tp2_distributed_optimizer_resume_tp1(lora_baseline, tmp_path) -> None:
    """2 steps at TP=2 with the distributed optimizer (adapters and their Adam state split over ranks), then
    the same exp_dir at TP=1 (DP=1) to step 4: the adapters and their optimizer state reshard like full weights."""
    _run(
        2,
        tmp_path,
        *LORA[:-1],
        "trainer.max_steps=2",
        "parallel.tp=2",
        "parallel.use_distributed_optimizer=true",
    )
    rows, stdout = _launch(1, tmp_path, *LORA, "parallel.use_distributed_optimizer=true")
    _assert_same(rows, lora_baseline, 4)
    assert "at step 2 (resharded: tp 2->1, pp 1->1, dp 1->1)" in stdout
