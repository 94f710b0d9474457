"""Multi-process workers for tests/distributed (run by ``_launch.run_workers``, never collected by pytest).

Usage: ``python _workers.py {equivalence|train_multi|train_single} OUT_DIR``. Each worker runs several
layouts inside one process group (megatron's groups are rebuilt between them) to pay the ~10 s start-up
of torch + megatron once, and rank 0 writes ``OUT_DIR/<worker>.pt`` for the test to compare.
The ``__main__`` guard is required: torch_dist checkpoint saving starts helper processes that re-import
the main module.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nemo_rpo.config.schema import ModelConfig, OptimConfig, ParallelConfig
from nemo_rpo.distributed.cpu_support import prepare_megatron_import
from nemo_rpo.distributed.launch import ParallelInfo, init_distributed, teardown_distributed

VOCAB = 256
SEQ = 32
GLOBAL_BATCH = 8
MICRO_BATCH = 4  # equivalence worker
TRAIN_MICRO_BATCH = 2  # training workers
SEED = 1234
CKPT_STEP = 2  # checkpoint after this many steps ...
RESUME_STEPS = 2  # ... then compare this many more
DP_STEPS = 3


def model_config(recompute: str | None = None) -> ModelConfig:
    # Every field the tests depend on is explicit, so schema default changes cannot move them.
    return ModelConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        max_seq_len=SEQ,
        make_vocab_size_divisible_by=128,
        normalization="RMSNorm",
        activation="swiglu",
        position_embedding_type="rope",
        untie_embeddings_and_output_weights=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        precision="fp32",
        transformer_impl="local",
        recompute_granularity=recompute,
    )


def optim_config() -> OptimConfig:
    # No warmup: with megatron's scheduler a warmup step 0 runs at lr 0, which would hide a bad step.
    return OptimConfig(
        lr=1e-3, min_lr=1e-4, weight_decay=0.01, clip_grad=1.0, warmup_steps=0, decay_style="cosine"
    )


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    """A deterministic global batch, identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=gen)
    return {
        "input_ids": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "position_ids": torch.arange(SEQ).expand(GLOBAL_BATCH, SEQ).contiguous(),
        "weights": torch.rand(GLOBAL_BATCH, SEQ, generator=gen) - 0.5,
    }


def split(batch: dict[str, torch.Tensor], rows: slice, micro: int) -> list[dict[str, torch.Tensor]]:
    part = {k: v[rows] for k, v in batch.items()}
    n = part["input_ids"].shape[0]
    return [{k: v[i : i + micro] for k, v in part.items()} for i in range(0, n, micro)]


def build(parallel: ParallelConfig, seed: int, recompute: str | None = None):  # noqa: ANN201
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.training.optimizer import wrap_ddp

    info = init_distributed(parallel, seed)
    model = wrap_ddp(build_gpt_model(model_config(recompute), parallel, VOCAB), parallel)
    return info, model


def forward_backward(
    model: torch.nn.Module,
    microbatches: list[dict[str, torch.Tensor]],
    loss_of: Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor],
    store: list[torch.Tensor] | None = None,
) -> list[dict]:
    """One forward+backward over the micro-batches with megatron's schedule for the current layout."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_rpo.models.logps import forward_token_logps

    def forward_step(data_iterator, model):  # noqa: ANN001, ANN202 - megatron's contract
        mb = next(data_iterator)
        output = forward_token_logps(model, mb["input_ids"], mb["position_ids"], mb["labels"])

        def loss_func(logps: torch.Tensor):  # noqa: ANN202
            if store is not None:
                store.append(logps.detach().clone())
            loss = loss_of(logps, mb)
            # A copy: the schedule divides the returned loss by num_microbatches in place.
            return loss, {"loss": loss.detach().clone()}

        return output, loss_func

    model.zero_grad_buffer()
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(microbatches),
        model=[model],
        num_microbatches=len(microbatches),
        seq_length=SEQ,
        micro_batch_size=microbatches[0]["input_ids"].shape[0],
        forward_only=False,
    )


def full_tensors(model: torch.nn.Module, info: ParallelInfo, *, grads: bool) -> dict[str, torch.Tensor]:
    """This stage's parameters (or main grads) gathered over TP, named by global layer index."""
    from megatron.core import parallel_state

    module = model.module if hasattr(model, "module") else model
    offset = info.pp_rank * (model_config().num_layers // info.pp_size)
    group = parallel_state.get_tensor_model_parallel_group()
    result = {}
    for name, param in module.named_parameters():
        tensor = (param.main_grad if grads else param.data).detach()
        if info.tp_size > 1 and getattr(param, "tensor_model_parallel", False):
            parts = [torch.empty_like(tensor) for _ in range(info.tp_size)]
            torch.distributed.all_gather(parts, tensor.contiguous(), group=group)
            dim = param.partition_dim
            if "linear_fc1" in name:  # SwiGLU: each rank holds [gate_shard; up_shard]
                halves = [p.chunk(2, dim=dim) for p in parts]
                tensor = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=dim)
            else:
                tensor = torch.cat(parts, dim=dim)
        name = re.sub(
            r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name
        )
        result[name] = tensor.clone()
    # Tied embeddings: the last stage's output_layer.weight is a synchronised copy of the embedding.
    if not model_config().untie_embeddings_and_output_weights:
        result.pop("output_layer.weight", None)
    return result


def gather_to_rank0(info: ParallelInfo, payload: dict | None) -> dict:
    """Merge the payloads of all ranks (``None`` for redundant replicas) on every rank."""
    gathered: list = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, payload)
    merged: dict = {}
    for part in gathered:
        for key, value in (part or {}).items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    return merged


# --------------------------------------------------------------------------------------------------
# TP / PP equivalence of token log-probs and their gradients
# --------------------------------------------------------------------------------------------------


def equivalence(out_dir: Path) -> None:
    from nemo_rpo.training.checkpoint import load_checkpoint, save_checkpoint

    batch = make_batch(seed=7)
    microbatches = split(batch, slice(0, GLOBAL_BATCH), MICRO_BATCH)

    def loss_of(logps: torch.Tensor, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        return (logps * mb["weights"]).mean()

    results = {}
    exp_dir = out_dir / "tp1_exp"
    # Activation recompute rides along (it re-runs forward inside autograd's backward).
    for tp, pp, recompute in ((1, 1, None), (2, 1, "selective"), (1, 2, None), (2, 2, "full")):
        parallel = ParallelConfig(tp=tp, pp=pp)
        # A different seed per layout: equality below can only come from the loaded checkpoint.
        info, model = build(parallel, seed=SEED + 10 * tp + pp, recompute=recompute)
        if (tp, pp) != (1, 1):
            load_checkpoint(exp_dir / "checkpoints" / "step_00000000", model, None, None)
        store: list[torch.Tensor] = []
        forward_backward(model, microbatches, loss_of, store)
        grads = full_tensors(model, info, grads=True)  # every TP peer joins the all-gathers
        payload = None
        if info.dp_rank == 0 and info.tp_rank == 0:  # one copy per pipeline stage
            payload = {"grads": grads}
            if info.is_last_pp:
                payload["logps"] = torch.cat(store)
        results[f"tp{tp}_pp{pp}"] = gather_to_rank0(info, payload)
        if (tp, pp) == (1, 1):
            save_checkpoint(exp_dir, 0, model, None, None, {})
        del model
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_dir / "equivalence.pt")
    teardown_distributed()


# --------------------------------------------------------------------------------------------------
# Training: DP=2 vs DP=1, checkpoint TP=2 -> TP=1 resume
# --------------------------------------------------------------------------------------------------


def lm_loss(logps: torch.Tensor, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    return -logps.mean()


def train_steps(model, optimizer, scheduler, info: ParallelInfo, steps: range) -> list[float]:  # noqa: ANN001
    """Optimizer steps over the deterministic global batches; returns the global mean loss per step."""
    losses = []
    rows_per_rank = GLOBAL_BATCH // info.dp_size
    rows = slice(info.dp_rank * rows_per_rank, (info.dp_rank + 1) * rows_per_rank)
    for step in steps:
        optimizer.zero_grad()
        reports = forward_backward(
            model, split(make_batch(seed=100 + step), rows, TRAIN_MICRO_BATCH), lm_loss
        )
        ok, grad_norm, _ = optimizer.step()
        assert ok and grad_norm is not None and grad_norm > 0
        scheduler.step(increment=1)
        loss = torch.stack([r["loss"] for r in reports]).mean()
        from megatron.core import parallel_state

        torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
        losses.append(loss.item() / info.dp_size)
    return losses


def build_trainer(parallel: ParallelConfig, seed: int, max_steps: int):  # noqa: ANN201
    from nemo_rpo.training.optimizer import build_optimizer

    info, model = build(parallel, seed)
    optimizer, scheduler = build_optimizer([model], optim_config(), parallel, max_steps)
    return info, model, optimizer, scheduler


def adam_steps(optimizer) -> list[float]:  # noqa: ANN001
    inner = optimizer.optimizer
    return [float(s["step"]) for s in inner.state.values()]


def train_multi(out_dir: Path) -> None:
    """World 2: DP=2 trajectories (plain + distributed optimizer); TP=2 runs that save checkpoints."""
    from nemo_rpo.training.checkpoint import load_checkpoint, save_checkpoint

    total = CKPT_STEP + RESUME_STEPS
    results: dict = {}
    for dist_opt in (False, True):
        parallel = ParallelConfig(tp=1, pp=1, use_distributed_optimizer=dist_opt)
        info, model, optimizer, scheduler = build_trainer(parallel, SEED, total)
        results[f"dp2_dist{int(dist_opt)}"] = train_steps(model, optimizer, scheduler, info, range(DP_STEPS))

    for dist_opt in (False, True):
        parallel = ParallelConfig(tp=2, pp=1, use_distributed_optimizer=dist_opt)
        info, model, optimizer, scheduler = build_trainer(parallel, SEED, total)
        train_steps(model, optimizer, scheduler, info, range(CKPT_STEP))
        exp_dir = out_dir / f"tp2_dist{int(dist_opt)}"
        path = save_checkpoint(exp_dir, CKPT_STEP, model, optimizer, scheduler, {"data_position": CKPT_STEP})
        weights = full_tensors(model, info, grads=False)
        if info.rank == 0:
            torch.save(weights, out_dir / f"tp2_dist{int(dist_opt)}_weights.pt")
        # Same layout: RNG streams come back exactly; the Adam step is per parameter and correct.
        before = (torch.rand(4), random.random(), float(np.random.rand()))
        extra = load_checkpoint(path, model, optimizer, scheduler)
        after = (torch.rand(4), random.random(), float(np.random.rand()))
        results[f"tp2_dist{int(dist_opt)}_same_layout"] = {
            "extra": extra,
            "rng_equal": bool(torch.equal(before[0], after[0])) and before[1:] == after[1:],
            "scheduler_steps": scheduler.num_steps,
            "adam_steps": adam_steps(optimizer),
            "losses": train_steps(model, optimizer, scheduler, info, range(CKPT_STEP, total)),
            "adam_steps_after": adam_steps(optimizer),
        }
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_dir / "train_multi.pt")
    teardown_distributed()


def train_single(out_dir: Path) -> None:
    """World 1: DP=1 trajectories; uninterrupted TP=1 runs; TP=2 checkpoints resumed with TP=1."""
    from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint

    total = CKPT_STEP + RESUME_STEPS
    results: dict = {}
    for dist_opt in (False, True):
        parallel = ParallelConfig(tp=1, pp=1, use_distributed_optimizer=dist_opt)
        info, model, optimizer, scheduler = build_trainer(parallel, SEED, total)
        results[f"dp1_dist{int(dist_opt)}"] = train_steps(model, optimizer, scheduler, info, range(DP_STEPS))

        info, model, optimizer, scheduler = build_trainer(parallel, SEED, total)
        results[f"tp1_dist{int(dist_opt)}_uninterrupted"] = train_steps(
            model, optimizer, scheduler, info, range(total)
        )

        # A fresh model with another seed: equality can only come from the checkpoint.
        info, model, optimizer, scheduler = build_trainer(parallel, SEED + 99, total)
        path = find_latest_checkpoint(out_dir / f"tp2_dist{int(dist_opt)}")
        extra = load_checkpoint(path, model, optimizer, scheduler)
        state = optimizer.optimizer.state
        results[f"tp1_dist{int(dist_opt)}_resumed"] = {
            "path": str(path),
            "extra": extra,
            "weights": full_tensors(model, info, grads=False),
            "scheduler_steps": scheduler.num_steps,
            "adam_steps": adam_steps(optimizer),
            "exp_avg_sq_min": min(float(s["exp_avg_sq"].abs().sum()) for s in state.values()),
            "losses": train_steps(model, optimizer, scheduler, info, range(CKPT_STEP, total)),
            "adam_steps_after": adam_steps(optimizer),
        }

    # Atomic layout and pruning: three saves with keep_last=2, then an interrupted one.
    exp_dir = out_dir / "prune"
    for step in (1, 2, 3):
        save_checkpoint(exp_dir, step, model, optimizer, scheduler, {"step_seen": step}, keep_last=2)
    (exp_dir / "checkpoints" / "step_00000009").mkdir()  # no COMPLETE marker: a crashed save
    results["prune"] = {
        "dirs": sorted(p.name for p in (exp_dir / "checkpoints").iterdir()),
        "latest": find_latest_checkpoint(exp_dir).name,
    }
    torch.save(results, out_dir / "train_single.pt")
    teardown_distributed()


def main() -> None:
    prepare_megatron_import()  # megatron is imported lazily below, after the filters
    worker, out_dir = sys.argv[1], Path(sys.argv[2])
    {"equivalence": equivalence, "train_multi": train_multi, "train_single": train_single}[worker](out_dir)


if __name__ == "__main__":
    main()
