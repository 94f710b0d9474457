"""Hugging Face TRL ``DPOTrainer`` on the anchor shape, timed step by step: the notes' TRL row, re-measured.

Run by ``bench_step.py --trl`` as a subprocess once per round (so TRL, accelerate and the HF Trainer never
share a process with megatron or its CPU layer), or by hand::

    python benchmarks/trl_dpo.py --warmup 2 --steps 5        # prints one JSON object
    python benchmarks/trl_dpo.py --shape smollm2              # SmolLM2-135M's shape (bench_offline.py)

Needs ``trl`` (``pip install -e .[bench]``; measured with trl 1.16.0, transformers 5.24.0). Setup, as in
the notes' row "TRL DPOTrainer, precomputed reference log-probs": a ``LlamaForCausalLM`` of the anchor
shape (hidden 256, 4 layers, 8 heads, ffn 704, vocab 8192, untied head, fp32, SDPA), ``DPOConfig`` with
``precompute_ref_log_probs=True``, 8 pairs per step (``per_device_train_batch_size=8``, no
accumulation), sigmoid loss, every sequence 256 tokens (64 prompt + 191 response + EOS), ``use_cpu``,
no logging, saving or evaluation during the timed steps. Token ids are random; a word-level tokenizer
maps the text ``"t17 t4031 ..."`` back to exactly those ids, so TRL's own tokenization runs unchanged.

A step's time is the wall time between consecutive ``on_step_end`` callbacks of ``Trainer.train()``:
everything TRL does per optimizer step (data loading, collation, forward/backward, clipping, AdamW, LR
schedule, its metrics), as a user of ``trainer.train()`` pays it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor import (  # noqa: E402
    PROMPT_LEN,
    RESPONSE_LEN,  # the response's last token is TRL's EOS
    SHAPES,
    mark,
    peak_rss_mb,
    step_sample,
)


def _tokenizer(vocab_size: int):
    """Word-level tokenizer: token ``t<i>`` is id ``i``; the last id is ``</s>`` (EOS), id 0 doubles as pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"</s>": vocab_size - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="t0", unk_token="t0")


def _dataset(num_rows: int, vocab_size: int, seed: int):
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)

    def text(n: int, lead: str = "") -> str:
        ids = torch.randint(1, vocab_size - 1, (n,), generator=gen).tolist()  # never EOS
        return lead + " ".join(f"t{i}" for i in ids)

    rows = [
        {
            "prompt": text(PROMPT_LEN),
            "chosen": text(RESPONSE_LEN - 1, " "),
            "rejected": text(RESPONSE_LEN - 1, " "),
        }
        for _ in range(num_rows)
    ]
    return Dataset.from_list(rows)


def run(
    warmup: int,
    steps: int,
    prompts: int = 8,
    threads: int = 2,
    seed: int = 1234,
    shape: str = "anchor",
    bf16: bool = False,
) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepClock(TrainerCallback):
        """Marks (wall time, rusage) at the start of training and at every ``on_step_end``."""

        def __init__(self) -> None:
            self.marks = []

        def on_train_begin(self, *args, **kwargs) -> None:
            self.marks = [mark()]

        def on_step_end(self, *args, **kwargs) -> None:
            self.marks.append(mark())

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dims = SHAPES[shape]
    vocab_size = dims["vocab_size"]
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=dims["hidden_size"],
            intermediate_size=dims["ffn_hidden_size"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            num_key_value_heads=dims["num_kv_heads"],
            max_position_embeddings=PROMPT_LEN + RESPONSE_LEN,
            tie_word_embeddings=dims["tied"],
            pad_token_id=0,
            eos_token_id=vocab_size - 1,
            bos_token_id=None,
        ),
    ).float()
    model.config._attn_implementation = "sdpa"
    total = warmup + steps
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=prompts,
            gradient_accumulation_steps=1,
            max_steps=total,
            num_train_epochs=1,
            learning_rate=1e-6,
            precompute_ref_log_probs=True,
            max_length=PROMPT_LEN + RESPONSE_LEN,
            beta=0.1,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
            bf16=bf16,  # transformers' mixed precision: fp32 weights, bf16 autocast on CPU
            fp16=False,
            seed=seed,
            disable_tqdm=True,
        )
        clock = StepClock()
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=_dataset(prompts * total, vocab_size, seed),
            processing_class=_tokenizer(vocab_size),
            callbacks=[clock],
        )
        lengths = [
            len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in trainer.train_dataset.select(range(2))
        ]
        trainer.train()
    samples = [step_sample(a, b) for a, b in zip(clock.marks[warmup:], clock.marks[warmup + 1 :])]
    import transformers
    import trl

    return {"samples": samples, "sequence_lengths": lengths, "trl": trl.__version__,
            "transformers": transformers.__version__, "peak_rss_mb": peak_rss_mb(), "shape": shape, "bf16": bf16}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="anchor")
    parser.add_argument("--default-malloc", action="store_true", help="as bench_step.py: leave glibc untuned")
    parser.add_argument("--bf16", action="store_true", help="DPOConfig(bf16=True): autocast to bf16 on CPU")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from nemo_rpo.distributed.cpu_support import tune_glibc_malloc

        tune_glibc_malloc()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args.warmup, args.steps, args.prompts, args.threads, args.seed, args.shape, args.bf16)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
