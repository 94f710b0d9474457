"""The real-model example's ground-truth judge: semantic similarity to MT-Bench's GPT-4 reference answer.

``score(prompts, responses)`` returns, for each response, the cosine similarity between its
all-MiniLM-L6-v2 sentence embedding (mean pooling over tokens, L2-normalised, as sentence-transformers
computes it) and the embedding of the GPT-4 reference answer of the MT-Bench question found in the
prompt. It is a real model standing in for a ground-truth judge, and it measures *closeness to one
reference answer*, not helpfulness or correctness: treat its numbers as what they are. Rewards lie in
[-1, 1]; an empty response scores 0.

Used as ``reward.judge=judge:score`` with ``examples/real_model`` on ``PYTHONPATH`` and
``NEMO_RPO_REAL_MODEL_DIR`` naming the prepared work directory (``setup.sh``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch


def _work_dir() -> Path:
    return Path(os.environ.get("NEMO_RPO_REAL_MODEL_DIR", "runs/real_model"))


@lru_cache(maxsize=1)
def _encoder():
    from transformers import AutoModel, AutoTokenizer

    path = (_work_dir() / "judge" / "minilm").read_text().strip()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@lru_cache(maxsize=1)
def _references() -> dict[str, str]:
    return json.loads((_work_dir() / "judge" / "references.json").read_text())


@torch.no_grad()
def embed(texts: list[str]) -> torch.Tensor:
    """L2-normalised mean-pooled MiniLM embeddings ``[N, 384]``."""
    tokenizer, model = _encoder()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def reference_for(prompt: str) -> str:
    """The reference answer of the MT-Bench question contained in the rendered ``prompt``."""
    found = [answer for question, answer in _references().items() if question in prompt]
    if len(found) != 1:
        raise ValueError(
            f"judge: expected one MT-Bench question in the prompt, found {len(found)}: {prompt[:80]!r}"
        )
    return found[0]


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """Cosine similarity of each response to its prompt's reference answer (0 for an empty response)."""
    refs = [reference_for(p) for p in prompts]
    keep = [i for i, r in enumerate(responses) if r.strip()]
    out = [0.0] * len(responses)
    if keep:
        a = embed([responses[i] for i in keep])
        b = embed([refs[i] for i in keep])
        for j, i in enumerate(keep):
            out[i] = float((a[j] * b[j]).sum())
    return out
