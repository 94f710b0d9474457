"""A frozen copy of the policy: online RPO's reference ``pi_ref`` (Alg. 2), refreshed per iteration (Alg. 4).

Same model and the same TP/PP sharding as the policy, no gradients, no optimizer state. With
``on_cpu=True`` its weights live in host memory between uses and visit the GPU only for the reference
forward pass (on a CPU machine that is a no-op). Its weights are saved as a weights-only distributed
checkpoint so that a run resumed mid-iteration gets the reference of that iteration back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.data.batch import PreferenceBatch
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from nemo_rpo.training.step import sequence_logps


def _unwrapped_named_parameters(chunk: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    while hasattr(chunk, "module"):  # megatron DDP / Float16Module
        chunk = chunk.module
    return dict(chunk.named_parameters())


class FrozenReference:
    """``pi_ref`` as a second, frozen model of this rank's pipeline stage."""

    def __init__(
        self, model: ModelConfig, parallel: ParallelConfig, vocab_size: int, *, device, on_cpu: bool
    ):
        self.model = build_gpt_model(model, parallel, vocab_size)
        self.model.requires_grad_(False)
        self.model.eval()
        self.device = torch.device(device)
        self.on_cpu = on_cpu and self.device.type != "cpu"
        self.model.to("cpu" if self.on_cpu else self.device)

    @torch.no_grad()
    def copy_from(self, policy: Sequence[torch.nn.Module]) -> None:
        """``pi_ref := pi`` (Alg. 4, line 2): copy the policy's current weights."""
        (chunk,) = policy
        source = _unwrapped_named_parameters(chunk)
        for name, param in self.model.named_parameters():
            param.copy_(source[name].detach())

    def sequence_logps(self, microbatches: Sequence[PreferenceBatch], num_examples: int) -> torch.Tensor:
        """Reference sequence log-probs ``[num_examples, R]`` (every rank gets the full table)."""
        if self.on_cpu:
            self.model.to(self.device)
        try:
            return sequence_logps([self.model], microbatches, num_examples)
        finally:
            if self.on_cpu:
                self.model.to("cpu")
            self.model.eval()

    def save(self, root: str | os.PathLike, step: int) -> None:
        """Weights-only checkpoint under ``<root>/checkpoints`` (collective; keeps the newest only)."""
        save_checkpoint(root, step, [self.model], None, None, {"step": step}, keep_last=1)

    def load(self, root: str | os.PathLike) -> int | None:
        """Load the newest reference saved under ``root``; returns its step, or None when there is none."""
        path = find_latest_checkpoint(root)
        if path is None:
            return None
        return int(load_checkpoint(path, [self.model], None, None, restore_rng=False)["step"])
