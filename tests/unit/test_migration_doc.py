"""docs/migration.md is checked, not just written: every row of its two mapping tables names a peer key
that the example config above it sets, and the command below it composes to exactly that value.

Values that change form on the way (a loss name, NeMo-Aligner's ``betas`` pair, TRL's batch product)
are translated here, once; that the translated loss names compute the peers' losses is proven in
``tests/unit/training/test_peer_losses.py``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemo_rpo.config.store import load_config

DOC = Path(__file__).parents[2] / "docs" / "migration.md"
TEXT = DOC.read_text()

NEMO_ALIGNER_LOSSES = {
    "dpo": "dpo",
    "ipo": "ipo",
    "rpo_sq": "distill_dpo",
    "rpo_bwd_kl": "rpo_bwd",
    "rpo_fwd_kl": "rpo_fwd",
}
NEMO_ALIGNER_SCHEDULES = {"CosineAnnealing": "cosine"}
TRL_LOSSES = {"sigmoid": ("dpo", False), "sigmoid_norm": ("dpo", True), "ipo": ("ipo", True)}


def block(marker: str) -> str:
    """The fenced block (or table) right after ``<!-- test: marker -->``."""
    match = re.search(rf"<!-- test: {marker} -->\n(```\w*\n(.*?)```|((?:\|[^\n]*\n)+))", TEXT, re.S)
    assert match, f"no block marked {marker!r} in {DOC}"
    return match.group(2) if match.group(2) is not None else match.group(3)


def table_rows(marker: str) -> list[tuple[str, list[str]]]:
    """(peer key, our keys) of each table row that maps to something (rows with — are notes)."""
    rows = []
    for line in block(marker).splitlines()[2:]:
        peer, ours = (cell.strip() for cell in line.strip("|").split("|")[:2])
        if ours != "—":
            rows.append((peer.strip("`"), re.findall(r"`([\w.]+)`", ours)))
    return rows


def command_config(marker: str):
    argv = shlex.split(block(marker).replace("\\\n", " "))
    assert argv[0] == "nemo-rpo-train"
    return load_config(argv[1:])


def get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def nemo_aligner_expected(peer: dict, key: str) -> list[Any]:
    value = get(peer, key)
    if key == "model.dpo.preference_loss":
        return [NEMO_ALIGNER_LOSSES[value]]
    if key == "model.optim.betas":
        return list(value)
    if key == "model.optim.sched.name":
        return [NEMO_ALIGNER_SCHEDULES[value]]
    if key == "model.data.data_prefix.train":
        (path,) = value
        return [path]
    return [value]


def trl_expected(peer: dict, key: str) -> list[Any]:
    if key == "loss_type":
        (loss_type,) = peer[key]
        return list(TRL_LOSSES[loss_type])
    if key == "gradient_accumulation_steps":  # one process in the example
        return [peer["per_device_train_batch_size"] * peer[key]]
    return [peer[key]]


def trl_config() -> dict[str, Any]:
    call = ast.parse(block("trl config")).body[0].value
    assert isinstance(call, ast.Call) and call.func.id == "DPOConfig"
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


CASES = {
    "nemo_aligner": (lambda: yaml.safe_load(block("nemo_aligner config")), nemo_aligner_expected),
    "trl": (trl_config, trl_expected),
}


@pytest.mark.parametrize("peer_name", list(CASES))
def test_every_mapping_row_holds_for_the_example(peer_name):
    load_peer, expected = CASES[peer_name]
    peer, ours = load_peer(), command_config(f"{peer_name} command")
    rows = table_rows(f"{peer_name} table")
    assert len(rows) >= 15
    for peer_key, our_keys in rows:
        values = expected(peer, peer_key)
        assert [get(ours, k) for k in our_keys] == values, (peer_key, our_keys)


def test_loss_names_are_the_ones_proven_and_the_ones_documented():
    """The translations above are those ``test_peer_losses.py`` proves equal, and the tables state them."""
    spec = importlib.util.spec_from_file_location(
        "peer_losses", Path(__file__).parent / "training" / "test_peer_losses.py"
    )
    peer_losses = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer_losses)
    assert peer_losses.NEMO_ALIGNER_NAMES == NEMO_ALIGNER_LOSSES
    assert peer_losses.TRL_NAMES == TRL_LOSSES
    nemo_note = next(line for line in block("nemo_aligner table").splitlines() if "preference_loss`" in line)
    for theirs, ours in NEMO_ALIGNER_LOSSES.items():
        assert re.search(rf"`{theirs}` → `{ours}`", nemo_note), theirs
    trl_note = next(line for line in block("trl table").splitlines() if line.startswith("| `loss_type`"))
    for theirs, (ours, average) in TRL_LOSSES.items():
        expected = f"`loss={ours}" + (" loss.average_log_probs=true`" if average else "`")
        assert f'`["{theirs}"]` → {expected}' in trl_note, theirs
