"""Worker for ``test_generation_parallel.py``: sample from one policy under TP=1, TP=2 and PP=2.

Run by ``torchrun --nproc_per_node=2 _generation_worker.py OUT_DIR``. The same weights at every layout
come from ``build_gpt_model(..., init_seed=...)``; each layout samples with and without the KV cache
and greedily, every rank checks that all ranks hold the same output, and rank 0 writes
``OUT_DIR/generation.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from nemo_rpo.config.schema import GenerationConfig, ModelConfig, ParallelConfig
from nemo_rpo.distributed.cpu_support import prepare_megatron_import
from nemo_rpo.distributed.launch import init_distributed, teardown_distributed

VOCAB, PAD, EOS = 259, 256, 258
PROMPTS = [[257, 114, 101, 118, 10], [257, 115, 111, 114, 116, 58, 32, 51, 10], [257, 117, 10]]
K = 3
INIT_SEED = 21


def model_config() -> ModelConfig:
    # A larger init std than 0.02 makes next-token distributions peaked (no greedy near-ties) while keeping
    # float32 rounding of the log-probs near 1e-6.
    return ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, max_seq_len=32, normalization="RMSNorm",
                       activation="swiglu", position_embedding_type="rope", untie_embeddings_and_output_weights=False,
                       precision="fp32", transformer_impl="local", init_method_std=0.2)  # fmt: skip


def sample(model, cfg: GenerationConfig) -> dict[str, torch.Tensor]:  # noqa: ANN001
    from nemo_rpo.generation import generate, sampling_generator

    out = generate([model], PROMPTS, cfg, num_samples=K, eos_id=EOS, pad_id=PAD, vocab_size=VOCAB,
                   generator=sampling_generator(7, 3))  # fmt: skip
    return {"tokens": out.tokens, "mask": out.response_mask, "logps": out.logps}


def main() -> None:
    prepare_megatron_import()
    out_dir = Path(sys.argv[1])
    from nemo_rpo.models.gpt import build_gpt_model

    runs = {
        "sample": GenerationConfig(max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.95),
        "sample_no_cache": GenerationConfig(
            max_new_tokens=10, temperature=0.9, top_k=40, top_p=0.95, use_kv_cache=False
        ),
        "greedy": GenerationConfig(max_new_tokens=10, temperature=0.0),
    }
    results: dict = {}
    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        parallel = ParallelConfig(tp=tp, pp=pp)
        init_distributed(parallel, seed=100 + 10 * tp + pp)  # the weights come from init_seed alone
        model = build_gpt_model(model_config(), parallel, VOCAB, init_seed=INIT_SEED)
        layout = {name: sample(model, cfg) for name, cfg in runs.items()}
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, layout)
        layout["ranks_agree"] = all(
            torch.equal(other[name][key], layout[name][key])
            for other in gathered
            for name in runs
            for key in layout[name]
        )
        results[f"tp{tp}_pp{pp}"] = layout
        del model
    if torch.distributed.get_rank() == 0:
        torch.save(results, out_dir / "generation.pt")
    teardown_distributed()


if __name__ == "__main__":
    main()
