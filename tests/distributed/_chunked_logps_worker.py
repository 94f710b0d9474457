"""Worker for ``test_chunked_logps_tp.py``: the chunked LM head + NLL at the process's TP size.

Run by ``torchrun --nproc_per_node=N _chunked_logps_worker.py OUT_DIR`` (N = TP). Writes
``OUT_DIR/tp{N}.pt`` from rank 0:

- ``fn_*``: :func:`chunked_lm_head_nll` with each rank holding its vocabulary slice of one weight
  (128 rows, ids >= 100 padding), the NLL, the hidden gradient (all-reduced by the function's TP copy)
  and the whole weight gradient gathered from the slices; ``ref_*`` the same from plain
  ``log_softmax`` over the whole unpadded vocabulary, computed on one rank.
- ``model_nll`` / ``model_nll_whole``: the labelled forward of a tiny policy (same weights at every
  layout, ``init_seed``) with ``logps_chunk_size=5`` and 0; ``model_grad_diff``: the largest
  difference between the two models' parameter gradients on any rank.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.distributed.cpu_support import prepare_megatron_import
from nemo_rpo.distributed.launch import init_distributed, teardown_distributed

VOCAB, PADDED, REAL = 128, 128, 100
SEQ, BATCH, HIDDEN = 9, 3, 16


def function_case(tp: int, rank: int) -> dict[str, torch.Tensor]:
    from megatron.core import parallel_state

    from nemo_rpo.models.logps import chunked_lm_head_nll

    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(SEQ, BATCH, HIDDEN, generator=gen)
    weight = torch.randn(PADDED, HIDDEN, generator=gen)
    labels = torch.randint(0, REAL, (BATCH, SEQ), generator=gen)
    upstream = torch.rand(BATCH, SEQ, generator=gen)

    width = PADDED // tp
    h = hidden.clone().requires_grad_()
    w = weight[rank * width : (rank + 1) * width].clone().requires_grad_()
    nll = chunked_lm_head_nll(h, w, labels, chunk_size=4, real_vocab_size=REAL)
    (nll * upstream).sum().backward()
    slices = [torch.empty_like(w.grad) for _ in range(tp)]
    torch.distributed.all_gather(slices, w.grad, group=parallel_state.get_tensor_model_parallel_group())

    h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logps = torch.log_softmax(h_ref @ w_ref[:REAL].t(), dim=-1)  # [s, b, REAL]
    nll_ref = -logps.gather(-1, labels.t().unsqueeze(-1)).squeeze(-1).t()
    (nll_ref * upstream).sum().backward()
    return {"fn_nll": nll.detach(), "fn_grad_hidden": h.grad, "fn_grad_weight": torch.cat(slices),
            "ref_nll": nll_ref.detach(), "ref_grad_hidden": h_ref.grad, "ref_grad_weight": w_ref.grad}  # fmt: skip


def model_case(tp: int) -> dict[str, torch.Tensor]:
    from nemo_rpo.models.gpt import build_gpt_model

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, REAL, (4, 13), generator=gen)
    input_ids, labels, positions = ids[:, :-1], ids[:, 1:], torch.arange(12).expand(4, 12)
    loss_mask = torch.ones(4, 12)
    out, grads = {}, []
    for chunk, key in ((5, "model_nll"), (0, "model_nll_whole")):
        cfg = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_seq_len=16,
                          transformer_impl="local", logps_chunk_size=chunk)  # fmt: skip
        model = build_gpt_model(cfg, ParallelConfig(tp=tp), REAL, init_seed=1)
        nll = model(input_ids, positions, None, labels=labels, loss_mask=loss_mask)
        (nll * torch.linspace(0.1, 1.0, 12)).sum().backward()
        out[key] = nll.detach()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    diff = torch.tensor(max((grads[0][n] - g).abs().max().item() for n, g in grads[1].items()))
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    out["model_grad_diff"] = diff
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    tp = int(os.environ.get("WORLD_SIZE", "1"))
    prepare_megatron_import()
    info = init_distributed(ParallelConfig(tp=tp), seed=0)
    results = function_case(tp, info.rank)
    results.update(model_case(tp))
    if info.rank == 0:
        torch.save(results, out_dir / f"tp{tp}.pt")
    teardown_distributed()


if __name__ == "__main__":
    main()
