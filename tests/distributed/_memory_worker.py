"""Worker for ``test_bounded_memory.py``: decode without a KV cache and print the peak resident memory.

``python _memory_worker.py MODE STEPS`` samples STEPS tokens for 32 rows from a tiny policy by running the
whole growing sequence through the model at every step (what generation without a KV cache does) and
prints ``peak_mb=<ru_maxrss in MB>``. MODE: ``plain`` (glibc as it comes), ``kept`` (glibc keeping freed
memory, ``trainer.keep_freed_memory``, and the policy's forward as it runs), ``kept_unscoped`` (the same
allocator, megatron's ``GPTModel.forward`` called directly: the growth the policy's scope prevents).
"""

from __future__ import annotations

import resource
import sys

import torch

from nemo_rpo.distributed.cpu_support import prepare_megatron_import, tune_glibc_malloc


def main() -> None:
    mode, steps = sys.argv[1], int(sys.argv[2])
    prepare_megatron_import()
    if mode != "plain" and not tune_glibc_malloc():
        print("skip: glibc's allocator cannot be tuned here")
        return
    from megatron.core.models.gpt import GPTModel

    from nemo_rpo.config.schema import ModelConfig, ParallelConfig
    from nemo_rpo.distributed.launch import init_distributed
    from nemo_rpo.models.gpt import build_gpt_model

    init_distributed(ParallelConfig(), seed=0)
    cfg = ModelConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, max_seq_len=128, transformer_impl="local"
    )
    model = build_gpt_model(cfg, ParallelConfig(), 8192, init_seed=1).eval()
    forward = model.forward if mode != "kept_unscoped" else (lambda *args: GPTModel.forward(model, *args))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 8192, (32, 16), generator=gen)
    with torch.no_grad():
        for _ in range(steps):
            width = tokens.shape[1]
            logits = forward(tokens, torch.arange(width).expand(32, width), None)
            probs = torch.softmax(logits[:, -1], dim=-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=gen)], dim=1)
    print(f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
