"""The data users already have trains as it is: 5 rows of each peer shape (``tests/fixtures/formats``) and
a Hub-style parquet directory run 3 steps through the CLI with ``loss=dpo``, and with ``loss=rpo_bwd``
where the rows carry rewards; ``loss=rpo_bwd`` on rows without rewards stops with one line.

In-process (``nemo_rpo.cli.train.main``, as ``test_input_errors.py``) so megatron is imported once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemo_rpo.cli.train import main

pytestmark = pytest.mark.functional

FIXTURES = Path(__file__).parents[1] / "fixtures" / "formats"
SMALL = ["trainer.global_batch_size=4", "trainer.micro_batch_size=2", "trainer.max_steps=3",
         "logging.progress_bar=false", "logging.tensorboard=false"]  # fmt: skip
# shape: (file, whether its rows carry rewards)
SHAPES = {
    "nemo_aligner_plain": ("nemo_aligner_plain.jsonl", False),
    "nemo_aligner_rewards": ("nemo_aligner_rewards.jsonl", True),
    "nemo_aligner_chat": ("nemo_aligner_chat.jsonl", True),
    "trl_explicit": ("trl_explicit.jsonl", False),
    "trl_implicit": ("trl_implicit.jsonl", False),
    "trl_conversational": ("trl_conversational.jsonl", False),
    "trl_conversational_implicit": ("trl_conversational_implicit.jsonl", False),
    "parquet_directory": (None, True),
}
RUNS = [(shape, "dpo") for shape in SHAPES] + [
    (shape, "rpo_bwd") for shape, (_, rewards) in SHAPES.items() if rewards
]


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def parquet_directory(root: Path) -> Path:
    """The NeMo-Aligner chat rows (nested messages, rewards) as a Hub snapshot: data/train-*.parquet."""
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (FIXTURES / "nemo_aligner_chat.jsonl").read_text().splitlines()]
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("shape, loss", RUNS, ids=[f"{s}-{loss}" for s, loss in RUNS])
def test_shape_trains_three_steps(tmp_path, capsys, shape, loss):
    name, _ = SHAPES[shape]
    data = FIXTURES / name if name else parquet_directory(tmp_path / "ds")
    exp = tmp_path / "run"
    code, out, err = _main(capsys, f"loss={loss}", "k=2", f"data.train_path={data}", f"exp_dir={exp}", *SMALL)
    assert code == 0, (out + err)[-3000:]
    assert "step     1/3 | loss" in out
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_reward_aware_loss_on_rows_without_rewards_is_one_line(tmp_path, capsys):
    data = FIXTURES / "nemo_aligner_plain.jsonl"
    code, out, err = _main(
        capsys, "loss=rpo_bwd", "k=2", f"data.train_path={data}", f"exp_dir={tmp_path}", *SMALL
    )
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {data}:1: chosen_reward: missing (rewards are never defaulted)"
    ]


def test_average_log_probs_reaches_the_loss(tmp_path, capsys):
    """Same data and seed: step 1 is log 2 both ways (policy = reference), then the updates differ."""
    data = FIXTURES / "trl_explicit.jsonl"
    losses = {}
    for average in ("false", "true"):
        exp = tmp_path / average
        argv = [
            "loss=dpo",
            f"loss.average_log_probs={average}",
            f"data.train_path={data}",
            f"exp_dir={exp}",
            *SMALL,
        ]
        assert _main(capsys, *argv)[0] == 0
        losses[average] = [
            json.loads(line)["loss"] for line in (exp / "metrics.jsonl").read_text().splitlines()
        ]
    assert losses["false"][0] == pytest.approx(math.log(2), abs=1e-4) == losses["true"][0]
    assert losses["false"][2] != pytest.approx(losses["true"][2], abs=1e-6)
