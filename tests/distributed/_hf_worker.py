"""Worker for ``test_hf_parallel.py``: HF weights loaded at TP=2 and at PP=2 reproduce the HF model.

Run by ``torchrun --nproc_per_node=2 _hf_worker.py OUT_DIR``. For the tiny Llama (GQA, untied) and Qwen2
(biases, tied) models of ``tests/hf_tiny.py``: at TP=2 the vocab-parallel logits are gathered and
compared with HF's logits; at PP=2 the response log-probs of a K=2 batch go through megatron's pipeline
schedule and are compared with HF's. Rank 0 writes the max abs errors to ``OUT_DIR/hf_parallel.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_tiny import VOCAB, tiny_hf_model  # noqa: E402

from nemo_rpo.config.schema import ModelConfig, ParallelConfig  # noqa: E402
from nemo_rpo.distributed.cpu_support import prepare_megatron_import  # noqa: E402
from nemo_rpo.distributed.launch import init_distributed, teardown_distributed  # noqa: E402


def hf_sequence_logps(hf, examples) -> torch.Tensor:  # noqa: ANN001
    rows = []
    for ex in examples:
        row = []
        for resp in ex.response_ids:
            ids = torch.tensor([ex.prompt_ids + resp])
            with torch.no_grad():
                logps = torch.log_softmax(hf(ids).logits.float(), dim=-1)[0]
            n = len(ex.prompt_ids)
            row.append(sum(logps[n - 1 + j, t].item() for j, t in enumerate(resp)))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def main() -> None:
    prepare_megatron_import()
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from nemo_rpo.algorithms.common import microbatches
    from nemo_rpo.data.preference import PreferenceExample
    from nemo_rpo.models.gpt import build_gpt_model
    from nemo_rpo.models.hf_io import load_hf_weights_
    from nemo_rpo.models.hf_mapping import model_fields_from_hf
    from nemo_rpo.training.step import sequence_logps

    out_dir = Path(sys.argv[1])
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 24), generator=gen)
    examples = [PreferenceExample(index=i, prompt_ids=torch.randint(4, VOCAB, (5 + i,), generator=gen).tolist(),
                                  response_ids=[torch.randint(4, VOCAB, (n,), generator=gen).tolist() for n in (6, 9)],
                                  rewards=[1.0, 0.0]) for i in range(4)]  # fmt: skip
    errors = {}
    for kind in ("llama", "qwen2"):
        hf = tiny_hf_model(kind)  # same seed on every rank: the same model
        cfg = ModelConfig(
            **model_fields_from_hf(hf.config.to_dict()), max_seq_len=64, transformer_impl="local"
        )
        info = init_distributed(ParallelConfig(tp=2), seed=0)
        model = build_gpt_model(cfg, ParallelConfig(tp=2), cfg.vocab_size).eval()
        load_hf_weights_(model, hf.state_dict(), cfg)
        with torch.no_grad():
            local = model(ids, torch.arange(24).expand(2, -1), None)
            full = gather_from_tensor_model_parallel_region(local)
            expected = hf(ids).logits
        errors[f"{kind}_tp2_logits"] = (full - expected).abs().max().item()
        errors[f"{kind}_logit_scale"] = expected.abs().max().item()

        info = init_distributed(ParallelConfig(pp=2), seed=0)
        model = build_gpt_model(cfg, ParallelConfig(pp=2), cfg.vocab_size)
        load_hf_weights_(model, hf.state_dict(), cfg)
        micro = microbatches(examples, 2, 3, info.device)
        ours = sequence_logps([model], micro, len(examples))
        theirs = hf_sequence_logps(hf, examples)
        errors[f"{kind}_pp2_seq_logps"] = (ours - theirs).abs().max().item()
        errors[f"{kind}_pp_stage_layers"] = len(model.decoder.layers)
    if info.rank == 0:
        torch.save(errors, out_dir / "hf_parallel.pt")
    teardown_distributed()


if __name__ == "__main__":
    main()
