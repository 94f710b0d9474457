"""Hugging Face TRL's ``RLOOTrainer``, one online step at a time: the peer row of ``bench_online.py``.

Run by ``bench_online.py`` in a fresh process per round (TRL, accelerate and the HF Trainer never share a
process with megatron), or by hand::

    python benchmarks/trl_online.py --model-dir DIR --new-tokens 64 --warmup 1 --steps 1   # one JSON line

``DIR`` is the Hugging Face directory ``bench_online.py`` writes (a random-weight ``LlamaForCausalLM`` of
SmolLM2-135M's shape and the word-level tokenizer of ``online_workload``); nemo-rpo loads the same weights.
Measured with trl 1.16.0 and transformers 5.25.0.

Setup, read off ``trl/trainer/rloo_trainer.py`` and ``rloo_config.py``: the policy is loaded from ``DIR``
(fp32, SDPA) and so is the reference (TRL builds it from the policy's path when ``beta > 0``);
``per_device_train_batch_size = prompts x K`` completions with ``num_generations = K``, no gradient
accumulation, so one step generates, scores and trains on the whole batch once (``steps_per_generation
= num_iterations = 1``); sampling through ``model.generate`` with the KV cache (no vLLM, no continuous
batching), temperature 1, no top-k/top-p, ``min_new_tokens = max_completion_length = N`` (EOS never ends
a completion early, as nemo-rpo's ``eos_id=-1``); ``use_cache=True`` (``TrainingArguments.use_cache``
defaults to False and the Trainer copies it into ``model.config.use_cache``: without it ``generate``
recomputes the whole prefix every token); ``gradient_checkpointing=False`` and ``bf16=False`` (RLOOConfig
defaults both on; nemo-rpo does neither here); ``beta = 0.1`` (nemo-rpo's rpo_sqloo beta);
AdamW at lr 1e-6 with ``max_grad_norm = 1``; no logging, saving or evaluation. The reward function is
``online_workload.reward_of_text`` on each decoded completion. Per step TRL runs ``generate``, a no-grad
forward of the policy (its "old" log-probs for the clipped ratio), a no-grad forward of the reference,
the rewards, and the training forward/backward with its fused LM head, then AdamW.

A step's time is the wall time between consecutive ``on_step_end`` callbacks (everything TRL does per
optimizer step). The phases are timed by wrapping the trainer's own methods on the instance (timing only):
``_generate`` (tokenize, ``generate``, decode), ``_calculate_rewards``, and
``_get_per_token_logps_and_entropies`` split into no-grad calls (old policy + reference) and the training
forward.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor import mark, peak_rss_mb, step_sample  # noqa: E402
from online_workload import PROMPT_LEN, K, ids_to_text, prompt_ids, reward_of_text  # noqa: E402


def token_reward(prompts, completions, **kwargs) -> list[float]:
    """TRL reward function: ``online_workload.reward_of_text`` of each decoded completion."""
    del prompts, kwargs
    return [reward_of_text(c) for c in completions]


def _timed(phases: dict, name_of, method):
    """``method`` with its wall time added to ``phases[name_of(args, kwargs)]`` (behaviour unchanged)."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            phases[name_of(args, kwargs)] += time.perf_counter() - start

    return wrapper


def run(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    class StepClock(TrainerCallback):
        """Marks (wall time, rusage) at the start of training and at every ``on_step_end``, and the phases."""

        def __init__(self) -> None:
            self.marks, self.phases, self.current = [], [], defaultdict(float)

        def on_train_begin(self, *a, **kw) -> None:
            self.marks = [mark()]

        def on_step_end(self, *a, **kw) -> None:
            self.marks.append(mark())
            self.phases.append(dict(self.current))
            self.current.clear()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    vocab_size = len(tokenizer)
    total = args.warmup + args.steps
    prompts = prompt_ids(args.prompts * total, PROMPT_LEN, vocab_size, args.seed)
    dataset = Dataset.from_list([{"prompt": ids_to_text(p)} for p in prompts])
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = RLOOConfig(
            output_dir=out,
            model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
            per_device_train_batch_size=args.prompts * K,
            gradient_accumulation_steps=1,
            num_generations=K,
            max_completion_length=args.new_tokens,
            generation_kwargs={"min_new_tokens": args.new_tokens},
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=0.1,
            learning_rate=1e-6,
            max_grad_norm=1.0,
            max_steps=total,
            shuffle_dataset=False,
            gradient_checkpointing=False,
            use_cache=True,  # TrainingArguments.use_cache defaults to False: Trainer sets model.config.use_cache
            bf16=False,
            fp16=False,
            use_cpu=True,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = RLOOTrainer(model=args.model_dir, reward_funcs=token_reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[clock])  # fmt: skip
        sampled = []
        generate = trainer._generate

        def counting_generate(prompts_):
            result = generate(prompts_)
            sampled.append([len(ids) for ids in result[1]])
            return result

        trainer._generate = _timed(clock.current, lambda a, kw: "generate_s", counting_generate)
        trainer._calculate_rewards = _timed(
            clock.current, lambda a, kw: "score_s", trainer._calculate_rewards
        )
        trainer._get_per_token_logps_and_entropies = _timed(
            clock.current,
            lambda a, kw: "train_forward_s" if torch.is_grad_enabled() else "old_and_ref_logps_s",
            trainer._get_per_token_logps_and_entropies,
        )
        trainer.train()
    lengths = {n for step in sampled for n in step}
    if lengths != {args.new_tokens}:
        raise RuntimeError(
            f"trl_online: completions of {sorted(lengths)} tokens, expected exactly {args.new_tokens}"
        )
    samples = [step_sample(a, b) for a, b in zip(clock.marks[args.warmup :], clock.marks[args.warmup + 1 :])]
    import transformers
    import trl

    return {"samples": samples, "phases": clock.phases[args.warmup :], "peak_rss_mb": peak_rss_mb(),
            "completions_per_step": [len(s) for s in sampled], "trl": trl.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc untuned")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from nemo_rpo.distributed.cpu_support import tune_glibc_malloc

        tune_glibc_malloc()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
