"""The defect the learning reference found: nemo-rpo's padded vocabulary rows in the softmax.

nemo-rpo pads the byte tokenizer's 259 ids to 384 embedding rows (``model.make_vocab_size_divisible_by``
128). Before ``PolicyGPTModel.mask_padded_vocab`` it kept the 125 padding rows in the training softmax,
as Megatron-LM does, while sampling renormalised over the 259 real ids and ``mcore-to-hf`` exported only
those. So it trained ``log pi_384(y) = log q(y) + sum_t log Z_t`` (``Z_t``: the real ids' share of the
mass) on samples drawn from ``q``; the reference trains ``log q``. This script measures the gap on a
checkpoint trained before the fix (its padding rows carry mass):

- the padding rows' probability mass at response positions, and ``sum_t log Z_t`` per response;
- the first DPO step's gradient norm on the reference side with 259 rows (``q``) and with the 384
  padded rows loaded from the Megatron checkpoint and left in the softmax (``pi_384``): the latter is the
  step-1 ``grad_norm`` nemo-rpo logged before the fix, so the padding is the whole step-1 difference.

Run: ``python benchmarks/learning_reference/pad_vocab.py runs/learning_reference_before/sft`` (a run
directory; its HF export is expected beside it as ``<run>_hf``, as ``compare.py`` writes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))


def padded_embedding(run: Path) -> torch.Tensor:
    """The ``[384, h]`` embedding (tied LM head) of the run's latest checkpoint, read through nemo-rpo."""
    from nemo_rpo.distributed.cpu_support import prepare_megatron_import

    prepare_megatron_import()
    from nemo_rpo.cli.convert import _run_config
    from nemo_rpo.distributed.launch import init_distributed
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint

    cfg = _run_config(run)
    init_distributed(cfg.parallel, 0)
    model = build_gpt_model(cfg.model, cfg.parallel, 259)
    load_checkpoint(find_latest_checkpoint(run), [model], None, None, restore_rng=False)
    return model.embedding.word_embeddings.weight.detach().clone()


def with_rows(hf: Path, embedding: torch.Tensor):
    """The exported HF Llama with its (tied) vocabulary replaced by ``embedding``'s rows."""
    import reference
    from transformers import LlamaForCausalLM

    base = reference.load_policy(str(hf))
    config = base.config
    config.vocab_size = embedding.shape[0]
    model = LlamaForCausalLM(config)
    state = base.state_dict()
    state["model.embed_tokens.weight"] = embedding
    state["lm_head.weight"] = embedding
    model.load_state_dict(state)
    return model.train()


def main() -> None:
    import reference

    from nemo_rpo.data.sampler import GlobalBatchSampler
    from nemo_rpo.data.synthetic import default_train_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seed", type=int, default=1, help="DPO data order of the gradient check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf = args.run.parent / f"{args.run.name}_hf"
    embedding = padded_embedding(args.run)
    models = {"q (259 rows, the reference)": reference.load_policy(str(hf)),
              "pi_384 (padded rows, as nemo-rpo)": with_rows(hf, embedding)}  # fmt: skip
    pairs = reference.read_pairs(str(default_train_path(2)))
    batch = [pairs[i] for i in GlobalBatchSampler(len(pairs), 32, seed=args.seed).indices_for_step(0)]

    # Padding mass at the response positions of the batch's chosen and rejected responses.
    padded = models["pi_384 (padded rows, as nemo-rpo)"]
    prompts = [p for p, _, _ in batch for _ in range(2)]
    responses = [r for _, c, rj in batch for r in (c, rj)]
    with torch.no_grad():
        q_logps = reference.sequence_logps(models["q (259 rows, the reference)"], prompts, responses)
        p_logps = reference.sequence_logps(padded, prompts, responses)
        masses = []
        for prompt, response in zip(prompts, responses):
            logits = padded(input_ids=torch.tensor([prompt + response])).logits[0].float()
            probs = torch.softmax(logits[len(prompt) - 1 : -1], dim=-1)
            masses += probs[:, 259:].sum(-1).tolist()
    result = {
        "pad_mass_mean": statistics.mean(masses),
        "pad_mass_max": max(masses),
        "log_pi384_minus_log_q_mean": float((p_logps - q_logps).mean()),
        "log_pi384_minus_log_q_min": float((p_logps - q_logps).min()),
    }
    for name, model in models.items():
        with torch.no_grad():
            ref = reference.pair_logps(model, batch)
        ratios = reference.pair_logps(model, batch) - ref
        loss = -F.logsigmoid(0.1 * (ratios[:, 0] - ratios[:, 1])).mean()
        loss.backward()
        norm = torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
        )
        result[f"dpo_step1_grad_norm {name}"] = float(norm)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
