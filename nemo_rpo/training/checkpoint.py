"""Resharding checkpoints: megatron ``dist_checkpointing`` (torch_dist) for model + optimizer, plus our extras.

Layout of one checkpoint::

    <exp_dir>/checkpoints/
        latest                      # name of the newest complete checkpoint, written last
        step_00000010/
            metadata.json, *.distcp, common.pt   # megatron torch_dist: model, optimizer, scheduler
            extra.json              # the caller's JSON extras (data position, ...), written by rank 0
            rng/rank_00000.pt ...   # python/numpy/torch/megatron-tracker RNG, one file per rank
            COMPLETE                # completion marker (JSON: step, layout, model shape, file manifest)

A save goes to ``.tmp_step_00000010`` and is renamed once every rank has finished, then ``latest`` is
replaced; a directory without ``COMPLETE`` is never picked, so a crash mid-save leaves the previous
checkpoint in charge. ``COMPLETE`` lists every file with its size, and a SHA-256 of each file up to
1 MiB (the index files: megatron's ``.metadata``, ``common.pt``, ``extra.json``, the RNG files; large
tensor files are checked by size only, to keep finding a checkpoint cheap); a directory that does not
match its manifest is torn and is skipped with a warning. Directories are deleted by renaming them to
``.trash_*`` first, so a crash mid-delete cannot leave a half-deleted checkpoint that looks complete.

The marker also records the model's shape; loading into a model of another shape fails before any
tensor is read, with ``<ckpt dir>: model: checkpoint has hidden_size 64, config has 128``. Tensors are
saved in megatron's layout-independent form (the distributed optimizer in its ``fully_reshardable``
format), so a checkpoint written with one TP/PP/DP layout loads into another. RNG states are restored
only into the same layout (per-rank streams do not map across).

Saves are synchronous. Megatron's writer reports its results through a queue served by a
``multiprocessing`` manager started with ``spawn`` (~4 s per process, and a helper process that outlives
a killed run); a synchronous save needs no such process, so its queue is an in-process ``queue.Queue``
(the ``checkpoint.results_queue`` patch of :mod:`nemo_rpo.patches`).

Callbacks: every callable in :data:`BEFORE_COMMIT` runs on rank 0 as ``callback(step, path)`` once the
checkpoint of ``step`` is complete in the temporary directory ``path``, just before it is renamed into
place (where a crash leaves a complete but uncommitted save). The list is empty unless a caller fills it;
``tests/functional/_faulty_train.py`` adds one that kills the run there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.utils import unwrap_model

from nemo_rpo import patches
from nemo_rpo.data.errors import DataError
from nemo_rpo.models.lora import has_adapters, is_adapter_key

__all__ = [
    "checkpoint_dir", "checkpoint_layout", "checkpoint_scheduler_state", "checkpoint_step",
    "find_checkpoint_problem", "find_latest_checkpoint", "load_checkpoint", "save_checkpoint",
]  # fmt: skip

logger = logging.getLogger(__name__)

_PREFIX = "step_"
_TMP_PREFIX = ".tmp_step_"
_TRASH_PREFIX = ".trash_"
_COMPLETE = "COMPLETE"
_LATEST = "latest"
_EXTRA = "extra.json"
_RNG_DIR = "rng"
_HASHED_MAX_BYTES = 1 << 20  # files up to this size get a SHA-256 in the manifest: the index files
_LAYOUT_KEYS = ("tp", "pp", "dp")
# ``callback(step, tmp_path)`` on rank 0 before a complete save is renamed into place (module docstring).
BEFORE_COMMIT: list[Callable[[int, Path], None]] = []
# Fields that fix the parameters' shapes: a checkpoint loads only into a model that agrees on all of them.
_SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                 "kv_channels", "gated_linear_unit", "normalization", "add_bias_linear", "add_qkv_bias")  # fmt: skip
_MODEL_FIELDS = ("vocab_size", "position_embedding_type", "share_embeddings_and_output_weights", "lora_rank")

ModelArg = torch.nn.Module | Sequence[torch.nn.Module]


def checkpoint_dir(exp_dir: str | os.PathLike, step: int) -> Path:
    """``<exp_dir>/checkpoints/step_<step:08d>``."""
    return Path(exp_dir) / "checkpoints" / f"{_PREFIX}{step:08d}"


def _sharding_metadata() -> dict:
    # A fresh dict per call: megatron caches a process group inside it.
    return {"distrib_optim_sharding_type": "fully_reshardable"}


def _chunks(model: ModelArg) -> list[torch.nn.Module]:
    chunks = [model] if isinstance(model, torch.nn.Module) else list(model)
    return unwrap_model(chunks)


def _model_sharded_state(chunks: list[torch.nn.Module], metadata: dict) -> dict:
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict(metadata=metadata)}
    # Virtual pipeline chunks, Megatron-LM's key convention.
    return {f"model{i}": chunk.sharded_state_dict(metadata=metadata) for i, chunk in enumerate(chunks)}


_PARTS = ("auto", "all", "base", "adapters")


def _resolve_part(chunks: list[torch.nn.Module], part: str) -> str:
    if part not in _PARTS:
        raise ValueError(f"checkpoint part must be one of {_PARTS}, got {part!r}")
    if part == "auto":
        return "adapters" if has_adapters(chunks) else "all"
    return part


def _select(state: dict, part: str) -> dict:
    """Keep the adapter entries (``part="adapters"``) or the others (``"base"``) of a model's sharded state."""
    if part == "all":
        return state
    keep_adapters = part == "adapters"
    return {k: v for k, v in state.items() if is_adapter_key(k) == keep_adapters}


def _sharded_state(
    model: ModelArg, optimizer: MegatronOptimizer | None, *, is_loading: bool, part: str = "all"
) -> dict:
    metadata = _sharding_metadata()
    state = {name: _select(sub, part) for name, sub in _model_sharded_state(_chunks(model), metadata).items()}
    if optimizer is not None:
        # Only the first model entry is needed: the optimizer maps its params to their ShardedTensors.
        model_state = state["model"] if "model" in state else {k: v for k, v in state.items()}
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata=metadata
        )
    return state


def _layout() -> dict[str, int]:
    return {
        "world_size": torch.distributed.get_world_size(),
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def _model_shape(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    """The shape-defining settings of the model, the same on every rank and layout (JSON values)."""
    if not chunks:
        return {}
    chunk = chunks[0]
    shape: dict[str, Any] = {}
    config = getattr(chunk, "config", None)
    for name in _SHAPE_FIELDS:
        if hasattr(config, name):
            shape[name] = getattr(config, name)
    for name in _MODEL_FIELDS:
        if hasattr(chunk, name):
            shape[name] = getattr(chunk, name)
    return {k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v) for k, v in shape.items()}


# --------------------------------------------------------------------------------------------------
# RNG state (one file per rank; torch.load(weights_only=True) compatible: no numpy arrays, no pickles)
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "megatron_tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(dict(state["megatron_tracker"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------------


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "sha256": hex (small files only)}}`` of every file but the marker."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel == _COMPLETE:
            continue
        entry: dict[str, Any] = {"size": path.stat().st_size}
        if entry["size"] <= _HASHED_MAX_BYTES:
            entry["sha256"] = _sha256(path)
        files[rel] = entry
    return files


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((path / _COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def find_checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete, intact checkpoint; ``None`` when it is.

    Checks the ``COMPLETE`` marker and every file of its manifest (size, and SHA-256 where recorded).
    """
    path = Path(path)
    if not (path / _COMPLETE).is_file():
        return f"no {_COMPLETE} marker (an interrupted save)"
    marker = _read_marker(path)
    if marker is None or not isinstance(marker.get("files"), dict):
        return f"unreadable {_COMPLETE} marker"
    for rel, entry in marker["files"].items():
        file = path / rel
        if not file.is_file():
            return f"{rel} is missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{rel} has {size} bytes, the manifest says {entry['size']}"
        if "sha256" in entry and _sha256(file) != entry["sha256"]:
            return f"{rel} does not match its SHA-256 in {_COMPLETE}"
    return None


def checkpoint_layout(path: str | os.PathLike) -> dict[str, int]:
    """The TP/PP/DP sizes (and world size) a checkpoint was saved with, from its marker."""
    marker = _read_marker(Path(path)) or {}
    return {k: marker[k] for k in ("world_size", *_LAYOUT_KEYS) if k in marker}


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer steps a complete checkpoint holds, from its marker (no tensor is read)."""
    return int(_read_marker(Path(path))["step"])


def checkpoint_scheduler_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The learning-rate scheduler's ``state_dict`` saved in a checkpoint (``None``: saved without one).

    Read from megatron's small ``common.pt`` alone: no tensor of the model or optimizer is loaded.
    """
    return dist_checkpointing.load_common_state_dict(str(path)).get("scheduler")


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_PREFIX) and path.name[len(_PREFIX) :].isdigit() and path.is_dir():
                found.append((int(path.name[len(_PREFIX) :]), path))
    return sorted(found)


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    return [(step, path) for step, path in _step_dirs(root) if (path / _COMPLETE).is_file()]


def _remove(path: Path) -> None:
    """Rename out of the way (atomic), then delete: a crash mid-delete leaves only a ``.trash_*`` dir."""
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    exp_dir: str | os.PathLike,
    step: int,
    model: ModelArg,
    optimizer: MegatronOptimizer | None,
    scheduler: OptimizerParamScheduler | None,
    extra: Mapping[str, Any] | None = None,
    *,
    keep_last: int | None = None,
    part: str = "auto",
) -> Path:
    """Save a complete, resharding-friendly checkpoint for ``step``; collective over all ranks.

    Args:
        exp_dir: experiment directory; checkpoints go to ``<exp_dir>/checkpoints/step_<step>``.
        step: optimizer steps completed.
        model: the model chunk(s) of this rank, DDP-wrapped or not.
        optimizer: the megatron optimizer, or ``None`` to save weights only.
        scheduler: the lr scheduler, or ``None``.
        extra: JSON-serialisable state of the caller (data position, ...), saved by rank 0; the RNG
            states of every rank are saved separately and automatically.
        keep_last: keep only this many newest complete checkpoints (``None`` keeps all).
        part: which of the model's tensors: ``"all"``, the LoRA ``"adapters"`` alone (their optimizer state
            is then all the optimizer holds), or the ``"base"`` weights alone; ``"auto"`` = the adapters of
            a model that has them (the caller's ``extra`` then says where its base weights are), else all.

    Returns:
        The final checkpoint directory.
    """
    extra_text = json.dumps(dict(extra or {}), indent=2, sort_keys=True)  # fail before any collective I/O
    rank = torch.distributed.get_rank()
    final = checkpoint_dir(exp_dir, step)
    root = final.parent
    tmp = root / f"{_TMP_PREFIX}{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for pattern in (f"{_TMP_PREFIX}*", f"{_TRASH_PREFIX}*"):  # leftovers of interrupted saves
            for stale in root.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    torch.distributed.barrier()

    chunks = _chunks(model)
    part = _resolve_part(chunks, part)
    state = _sharded_state(model, optimizer, is_loading=False, part=part)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    patches.install("checkpoint")  # megatron's writer reports through an in-process queue
    dist_checkpointing.save(state, str(tmp))

    (tmp / _RNG_DIR).mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / _RNG_DIR / f"rank_{rank:05d}.pt")
    layout = _layout()
    torch.distributed.barrier()

    if rank == 0:
        _write_text_atomic(tmp / _EXTRA, extra_text)
        marker = {"step": step, "saved_at": time.time(), **layout, "model": _model_shape(chunks), "part": part,
                  "files": _manifest(tmp)}  # fmt: skip
        _write_text_atomic(tmp / _COMPLETE, json.dumps(marker, indent=2))
        for callback in BEFORE_COMMIT:
            callback(step, tmp)
        if final.exists():  # re-saving a step: the new save replaces the old one
            _remove(final)
        os.replace(tmp, final)
        _write_text_atomic(root / _LATEST, final.name + "\n")
        if keep_last is not None:
            for _, old in _complete_checkpoints(root)[:-keep_last]:
                if old != final:
                    _remove(old)
        logger.info("saved checkpoint %s", final)
    torch.distributed.barrier()
    return final


# --------------------------------------------------------------------------------------------------
# Find / load
# --------------------------------------------------------------------------------------------------


def find_latest_checkpoint(exp_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint under ``<exp_dir>/checkpoints``, or ``None``.

    Trusts the ``latest`` marker when it names an intact checkpoint; otherwise (marker missing, stale,
    pointing at a pruned or torn directory) falls back to the highest intact ``step_*``, warning about
    every torn one it passes over. A directory without ``COMPLETE`` (a save that never finished) is
    passed over silently.
    """
    root = Path(exp_dir) / "checkpoints"
    marker = root / _LATEST
    named = None
    if marker.is_file():
        named = root / marker.read_text(encoding="utf-8").strip()
        if named.name.startswith(_PREFIX) and named.is_dir() and find_checkpoint_problem(named) is None:
            return named
    for _, path in reversed(_step_dirs(root)):
        problem = find_checkpoint_problem(path)
        if problem is None:
            if named is not None:
                logger.warning(
                    "checkpoint: %s names %s, which is not usable; using %s", marker, named.name, path
                )
            return path
        if (path / _COMPLETE).is_file():
            logger.warning("checkpoint: skipping torn checkpoint %s: %s", path, problem)
    return None


def load_checkpoint(
    path: str | os.PathLike,
    model: ModelArg,
    optimizer: MegatronOptimizer | None,
    scheduler: OptimizerParamScheduler | None,
    *,
    restore_rng: bool = True,
    part: str = "auto",
) -> dict[str, Any]:
    """Load a checkpoint into this rank's model (and optimizer/scheduler when given); collective.

    The current TP/PP/DP layout may differ from the saved one. RNG states are restored only when the
    layout is the same (otherwise the generators keep their fresh seeds).

    Args:
        path: a checkpoint directory (see :func:`find_latest_checkpoint`).
        model: the model chunk(s) of this rank, DDP-wrapped or not.
        optimizer: load optimizer state into it, or ``None`` for weights only (e.g. a reference model).
        scheduler: load the step count into it, or ``None``.
        restore_rng: ``False`` leaves this process's generators alone (loading a second model, such as
            a reward model, into a run that has its own RNG streams).
        part: which of the model's tensors to read (see :func:`save_checkpoint`); ``"base"`` loads a
            checkpoint of the whole model (or of base weights) under a LoRA model's adapters.

    Returns:
        The caller's ``extra`` dict, with ``"step"`` added from the completion marker.

    Raises:
        FileNotFoundError: ``path`` has no ``COMPLETE`` marker.
        DataError: the checkpoint is torn (``<path>: checkpoint: ...``) or was saved from a model of
            another shape (``<path>: model: checkpoint has hidden_size 64, config has 128``).
    """
    path = Path(path)
    if not (path / _COMPLETE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {_COMPLETE} marker)")
    problem = find_checkpoint_problem(path)
    if problem is not None:
        raise DataError(str(path), None, "checkpoint", f"torn or corrupted: {problem}")
    marker = _read_marker(path)
    chunks = _chunks(model)
    part = _resolve_part(chunks, part)
    saved_part = marker.get("part", "all")
    if part != "adapters" and saved_part == "adapters":
        raise DataError(str(path), None, "checkpoint", "holds LoRA adapters only, not the model's weights; "
                        "export merged weights with nemo-rpo-convert mcore-to-hf (docs/lora.md)")  # fmt: skip
    current = _model_shape(chunks)
    if part == "base":  # base weights come from any run, with or without adapters
        current.pop("lora_rank", None)
    _check_model_shape(path, marker.get("model", {}), current)
    request = _sharded_state(model, optimizer, is_loading=True, part=part)
    loaded = dist_checkpointing.load(request, str(path))
    strict = part == "all"  # a part leaves the other tensors as they are
    if len(chunks) == 1:
        chunks[0].load_state_dict(loaded["model"], strict=strict)
    else:
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{i}"], strict=strict)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        if "scheduler" not in loaded:
            raise KeyError(f"{path} holds no scheduler state")
        # Megatron's load_state_dict *adds* the saved step count (step(increment=num_steps)), which
        # double-counts when loading into a scheduler that has already stepped.
        scheduler.num_steps = 0
        scheduler.load_state_dict(loaded["scheduler"])

    layout = _layout()
    rng_file = path / _RNG_DIR / f"rank_{torch.distributed.get_rank():05d}.pt"
    same_layout = all(marker.get(k) == v for k, v in layout.items())  # world_size, tp, pp, dp
    if restore_rng and same_layout and rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    elif restore_rng:
        logger.info("checkpoint layout %s differs from %s: RNG states not restored", marker, layout)

    extra = json.loads((path / _EXTRA).read_text(encoding="utf-8"))
    extra.setdefault("step", marker["step"])
    torch.distributed.barrier()
    return extra


def _check_model_shape(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Compare before reading tensors: megatron's own shape errors name neither field nor values."""
    for name in (*_SHAPE_FIELDS, *_MODEL_FIELDS):
        if name in saved and name in current and saved[name] != current[name]:
            raise DataError(str(path), None, "model",
                            f"checkpoint has {name} {saved[name]}, config has {current[name]}")  # fmt: skip
