"""The patch registry (nemo_rpo.patches): every patch's expected signature against the installed libraries.

This is the canary for a megatron-core (or torch) upgrade: a changed target fails here, by the patch's
name, before any run does. The CPU execution layer's patches apply only without a GPU (and the GPU
machines run another torch), so they are checked only there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nemo_rpo import patches
from nemo_rpo.patches import SCOPES, PatchError, check, find_signature_changes, install, patch_set

CPU_ONLY = ("cpu_import", "cpu")


@pytest.mark.parametrize("patch", patch_set(), ids=lambda p: p.name)
def test_patch_fits_the_installed_libraries(patch: patches.Patch) -> None:
    if patch.scope in CPU_ONLY and torch.cuda.is_available():
        pytest.skip("the CPU execution layer is not installed on a GPU machine")
    problem = check(patch)
    assert problem is None, problem


def test_every_patch_is_declared_once() -> None:
    names = [p.name for p in patch_set()]
    assert len(names) == len(set(names))
    for patch in patch_set():
        assert patch.scope in SCOPES, patch.name
        assert (patch.replace is None) == (patch.scope == "override"), patch.name
        assert patch.why, patch.name


def _megatron_head_linear(input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad,  # noqa: ANN001, ANN202
                          sequence_parallel, grad_output_buffer=None, wgrad_deferral_limit=0, tp_group=None):  # fmt: skip
    """A later megatron-core's signature: ``async_grad_allreduce`` (deprecated in 0.16) removed."""


def test_the_canary_fails_by_name_when_a_signature_changes(monkeypatch) -> None:
    """Demonstration: the linear function changes under the ``cpu.linear`` patch (whose wrapper would pass
    ten positional arguments and raise TypeError); the canary fails naming that patch, nothing else."""
    from megatron.core.tensor_parallel import layers

    monkeypatch.setattr(layers, "linear_with_grad_accumulation_and_async_allreduce", _megatron_head_linear)
    linear = next(p for p in patch_set() if p.name == "cpu.linear")
    with pytest.raises(AssertionError, match=r"patch 'cpu\.linear' replaces megatron\.core\.tensor_parallel"):
        test_patch_fits_the_installed_libraries(linear)
    changes = find_signature_changes()
    assert len(changes) == 1 and changes[0].startswith("patch 'cpu.linear' replaces ")
    assert changes[0].endswith("has (input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, "
                               "sequence_parallel, grad_output_buffer=None, wgrad_deferral_limit=0, tp_group=None)")  # fmt: skip
    print("\n" + changes[0])


def test_install_refuses_a_changed_target_and_applies_nothing(monkeypatch) -> None:
    from megatron.core.transformer import attention
    from megatron.core.transformer.mlp import MLP

    def forward(self, hidden_states, inference_context=None):  # noqa: ANN001, ANN202
        return hidden_states

    from megatron.core.models.common.embeddings import rope_utils

    monkeypatch.setattr(patches, "_ORIGINALS", {})  # as in a fresh process
    monkeypatch.setattr(attention, "apply_rotary_pos_emb", rope_utils.apply_rotary_pos_emb)
    monkeypatch.setattr(MLP, "forward", forward)
    rope_before = attention.apply_rotary_pos_emb
    with pytest.raises(PatchError, match=r"^patch 'fast_paths\.swiglu' replaces megatron\.core\.transformer\.mlp:MLP\."
                                         r"forward and expects \(self, hidden_states, per_token_scale=None, \*\*kwargs\)"):  # fmt: skip
        install("fast_paths")
    assert MLP.forward is forward and attention.apply_rotary_pos_emb is rope_before  # nothing applied
    assert patches.installed() == []


def test_a_missing_target_is_named(monkeypatch) -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    monkeypatch.delattr(filesystem_async, "_results_queue")
    queue_patch = next(p for p in patch_set() if p.name == "checkpoint.results_queue")
    assert check(queue_patch).startswith("patch 'checkpoint.results_queue': megatron.core.dist_checkpointing")


def test_fast_paths_are_installed_by_the_spec_not_by_import() -> None:
    """In a fresh process: importing the model code patches nothing; layer_spec installs the fast paths
    only when model.fast_paths is on."""
    code = """
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer import attention
megatron_forward, megatron_rope = MLP.forward, attention.apply_rotary_pos_emb
from nemo_rpo import patches
from nemo_rpo.config.schema import ModelConfig
from nemo_rpo.models import gpt
assert MLP.forward is megatron_forward and attention.apply_rotary_pos_emb is megatron_rope
gpt.layer_spec(ModelConfig(transformer_impl="local", fast_paths=False))
assert MLP.forward is megatron_forward and patches.installed() == []
gpt.layer_spec(ModelConfig(transformer_impl="local"))
assert MLP.forward is not megatron_forward and attention.apply_rotary_pos_emb is not megatron_rope
assert patches.installed() == ["fast_paths.swiglu", "fast_paths.rope"], patches.installed()
"""
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, timeout=300)
