"""Offline reference log-probs: computed once at the initial weights, cached with the run.

Offline RPO needs ``log pi_ref`` of every (prompt, response) in the dataset, and the reference is
the initial policy (Alg. 1, line 1). Computing the whole table before the first update means no
second model is resident during training; the table is saved in ``<exp_dir>/reference_logps.pt``
so a resumed run reuses it instead of recomputing it from weights that have since moved.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from nemo_rpo.data.errors import DataError

CACHE_NAME = "reference_logps.pt"


def fingerprint(examples, extra: dict) -> str:
    """Hash of the token ids of every sequence plus ``extra`` (model shape, seed, ...)."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for ex in examples:
        h.update(json.dumps([ex.prompt_ids, ex.response_ids, ex.kl_response_ids]).encode())
    return h.hexdigest()


def load_cached(exp_dir: str, key: str) -> torch.Tensor | None:
    path = Path(exp_dir) / CACHE_NAME
    if not path.exists():
        return None
    cached = torch.load(path, weights_only=True)
    if cached.get("fingerprint") != key:
        raise DataError(str(path), None, "fingerprint",
                        "the cached reference log-probs belong to other data or another model; "
                        "use a new exp_dir or delete the file to recompute them")  # fmt: skip
    return cached["logps"]


def save_cached(exp_dir: str, key: str, logps: torch.Tensor) -> None:
    """Atomic write (temp file + rename), so an interrupted save leaves no half file behind."""
    path = Path(exp_dir) / CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"fingerprint": key, "logps": logps}, tmp)
    os.replace(tmp, path)
