"""A frozen copy of the policy: online RPO's reference ``pi_ref`` (Alg. 2), refreshed per iteration (Alg. 4);
for a LoRA policy, the policy with its adapters off (:class:`AdapterReference`).

Same model and the same TP/PP sharding as the policy, no gradients, no optimizer state. With
``on_cpu=True`` its weights live in host memory between uses and visit the GPU only for the reference
forward pass (on a CPU machine that is a no-op). Its weights are saved as a weights-only distributed
checkpoint so that a run resumed mid-iteration gets the reference of that iteration back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.data.batch import PreferenceBatch
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.models.lora import adapter_layers, adapters_disabled, merge_adapters_
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

    def update(self, policy: Sequence[torch.nn.Module], step: int, root: str | os.PathLike) -> None:
        """``pi_ref := pi`` at ``step`` (Alg. 4, line 2), saved under ``root`` for a resume mid-iteration."""
        self.copy_from(policy)
        self.save(root, step)


class AdapterReference:
    """``pi_ref`` of a LoRA policy: the policy itself with its adapters off (no second model).

    ``pi_ref := pi`` (an iteration's start) merges the adapters into the base weights
    (:func:`~nemo_rpo.models.lora.merge_adapters_`: ``W += scale * B A``, then ``B = 0`` and a new ``A``
    drawn from ``seed + step``), zeroes the adapters' Adam moments (they belonged to the old adapters) and
    saves the merged base weights under ``<exp_dir>/lora_base``. ``base`` is the pointer to the base
    weights each checkpoint carries: ``{"checkpoint": dir}``, ``{"hf": dir}`` or ``{"seed": n}`` (the
    model as built from the run's seed).
    """

    def __init__(self, policy: Sequence[torch.nn.Module], optimizer, base: dict, *, exp_dir: str, seed: int):
        self.policy, self.optimizer, self.base = policy, optimizer, base
        self.root, self.seed = Path(exp_dir) / "lora_base", seed

    def sequence_logps(self, microbatches: Sequence[PreferenceBatch], num_examples: int) -> torch.Tensor:
        """Reference sequence log-probs ``[num_examples, R]``: the base model's (every rank gets the table)."""
        with adapters_disabled(self.policy):
            return sequence_logps(self.policy, microbatches, num_examples)

    def update(
        self, policy: Sequence[torch.nn.Module], step: int, root: str | os.PathLike | None = None
    ) -> bool:
        """``pi_ref := pi`` at ``step``; returns whether there was anything to merge (adapters with ``B != 0``)."""
        del root  # the merged base goes to <exp_dir>/lora_base, named by the checkpoints' pointer
        layers = adapter_layers(policy)
        # NCCL reduces device tensors only
        device = layers[0].lora_b.device if layers else torch.device("cpu")
        active = torch.tensor([float(any(bool(layer.lora_b.any()) for layer in layers))], device=device)
        torch.distributed.all_reduce(active, op=torch.distributed.ReduceOp.MAX)
        if not active.item():
            return False  # the adapters are still at their zero start: the base is the policy
        merge_adapters_(policy, self.seed + step)
        if self.optimizer is not None:
            _zero_adam_moments(self.optimizer)
            if hasattr(self.optimizer, "reload_model_params"):
                self.optimizer.reload_model_params()  # 16-bit models: fp32 main copies of the new adapters
        path = save_checkpoint(self.root, step, policy, None, None, {"step": step}, part="base")
        self.base = {"checkpoint": str(path)}
        return True

    def load(self, root: str | os.PathLike) -> None:
        """Nothing to load: a resumed run reads its base weights from its checkpoint's pointer."""


def _zero_adam_moments(optimizer) -> None:
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", opt)
        for state in inner.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].zero_()
