"""Every patch this package applies to torch and megatron-core, in one registry.

The patches for a megatron-core release live in one module (:mod:`.megatron_core_0_16_1`), each a
:class:`Patch`: the target it replaces (``"module:Qual.name"``), the signature it expects there (parameter
names, kinds and defaults, without annotations), when it is applied (``scope``) and why.
:func:`install` applies the patches of one scope, checking each target's signature first, so a
megatron-core whose function changed fails by the patch's name (:class:`PatchError`) instead of a
``TypeError`` deep inside a step. ``tests/unit/test_patches.py`` compares every expected signature with
the installed libraries: the canary for a megatron-core upgrade.

Scopes, and who installs them:

- ``cpu_import`` / ``cpu``: the CPU execution layer (:mod:`nemo_rpo.distributed.cpu_support`), only
  without a GPU; ``cpu_import`` before megatron is imported.
- ``fast_paths``: SwiGLU and RoPE autograd functions (CPU and GPU), installed by
  :func:`nemo_rpo.models.gpt.layer_spec` when ``model.fast_paths`` is true; each model takes them only
  if its ``TransformerConfig`` has them switched on (:func:`set_fast_paths`), so ``model.fast_paths=false``
  runs megatron's own code even where another model installed them.
- ``distributed_optimizer``: ``DistributedOptimizer`` fixes for the torch-AdamW fallback
  (:func:`nemo_rpo.training.optimizer.build_optimizer`).
- ``checkpoint``: megatron's checkpoint writer (:func:`nemo_rpo.training.checkpoint.save_checkpoint`).
- ``override``: private methods our subclasses override (``PolicyGPTModel``); never installed, their
  signatures are checked like the others.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = [
    "Patch",
    "PatchError",
    "check",
    "fast_paths_enabled",
    "find_signature_changes",
    "install",
    "installed",
    "patch_set",
    "set_fast_paths",
]

# megatron-core release -> the module of its patches; other releases use the newest set and its checks.
_PATCH_MODULES = {"0.16.1": "nemo_rpo.patches.megatron_core_0_16_1"}
_NEWEST = "0.16.1"
SCOPES = ("cpu_import", "cpu", "fast_paths", "distributed_optimizer", "checkpoint", "override")
_MARK = "_nemo_rpo_patch"  # set on every replacement: the name of the patch that installed it


class PatchError(RuntimeError):
    """A patch's target is missing or no longer has the signature the patch was written for."""


@dataclass(frozen=True)
class Patch:
    """One replacement of a torch or megatron-core attribute."""

    name: str  # "cpu.linear"
    target: str  # "package.module:Owner.attribute"
    signature: str | None  # what the target's signature must be (``describe``); None: not a callable
    scope: str  # one of SCOPES
    why: str
    replace: Callable[[Any], Any] | None = None  # original -> replacement; None: a subclass overrides it
    when: Callable[[], bool] | None = None  # applied only where this returns True


_ORIGINALS: dict[str, Any] = {}  # patch name -> the attribute it replaced


def megatron_version() -> str:
    return metadata.version("megatron-core")


def patch_set() -> tuple[Patch, ...]:
    """The patches for the installed megatron-core (the newest set for a release without its own)."""
    module = _PATCH_MODULES.get(megatron_version(), _PATCH_MODULES[_NEWEST])
    return importlib.import_module(module).PATCHES


def resolve(target: str) -> tuple[Any, str]:
    """``"pkg.mod:A.b"`` -> ``(pkg.mod.A, "b")``: the owner object and the attribute name."""
    module_name, _, path = target.partition(":")
    owner = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, attr


def describe(obj: Any) -> str:
    """``obj``'s signature as parameter names, kinds and defaults, without annotations (their text varies
    with the torch and Python versions, the call contract does not)."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _unpatched(patch: Patch) -> Any:
    owner, attr = resolve(patch.target)
    if not hasattr(owner, attr):
        raise PatchError(f"patch {patch.name!r}: {patch.target} does not exist in megatron-core "
                         f"{megatron_version()} (the patch was written for {_NEWEST})")  # fmt: skip
    current = getattr(owner, attr)
    return _ORIGINALS.get(patch.name, current) if getattr(current, _MARK, None) == patch.name else current


def check(patch: Patch) -> str | None:
    """Why ``patch`` no longer fits the installed libraries, or None when its target is as expected."""
    try:
        original = _unpatched(patch)
    except PatchError as err:
        return str(err)
    if patch.signature is None:
        return None
    try:
        found = describe(original)
    except (TypeError, ValueError) as err:
        found = f"no signature ({err})"
    if found == patch.signature:
        return None
    return (f"patch {patch.name!r} replaces {patch.target} and expects {patch.signature} (megatron-core "
            f"{_NEWEST}), but megatron-core {megatron_version()} has {found}")  # fmt: skip


def find_signature_changes(scopes: tuple[str, ...] = SCOPES) -> list[str]:
    """One message per patch of ``scopes`` whose target changed (empty when every patch fits)."""
    return [msg for patch in patch_set() if patch.scope in scopes and (msg := check(patch)) is not None]


def install(scope: str) -> list[str]:
    """Apply every patch of ``scope`` that applies here; idempotent. Returns the names applied now.

    Raises:
        PatchError: a target is missing or has another signature; nothing of the scope is applied then.
    """
    if scope not in SCOPES or scope == "override":
        raise ValueError(f"install: unknown scope {scope!r}; choose one of {', '.join(SCOPES[:-1])}")
    todo = [
        p
        for p in patch_set()
        if p.scope == scope and p.name not in _ORIGINALS and (p.when is None or p.when())
    ]
    problems = [msg for p in todo if (msg := check(p)) is not None]
    if problems:
        raise PatchError("; ".join(problems))
    for patch in todo:
        owner, attr = resolve(patch.target)
        original = getattr(owner, attr)
        replacement = patch.replace(original)
        if replacement is not original:
            setattr(replacement, _MARK, patch.name)
            setattr(owner, attr, replacement)
        _ORIGINALS[patch.name] = original
    return [p.name for p in todo]


def installed() -> list[str]:
    """Names of the patches applied in this process."""
    return list(_ORIGINALS)


# --------------------------------------------------------------------------------------------------
# Fast paths: installed process-wide, taken per model
# --------------------------------------------------------------------------------------------------

_FAST_PATHS = "nemo_rpo_fast_paths"


def set_fast_paths(config: Any, enabled: bool) -> None:
    """Whether the models built with this ``TransformerConfig`` take the ``fast_paths`` patches."""
    setattr(config, _FAST_PATHS, enabled)


def fast_paths_enabled(config: Any) -> bool:
    return bool(getattr(config, _FAST_PATHS, False))
