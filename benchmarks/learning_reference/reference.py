"""An independent learning reference: online RLOO and offline DPO in plain PyTorch on `transformers`' Llama.

Nothing here comes from ``nemo_rpo.training``, ``nemo_rpo.algorithms``, ``nemo_rpo.generation`` or
``nemo_rpo.losses``: the model is ``transformers.LlamaForCausalLM`` loaded from a directory written by
``nemo-rpo-convert mcore-to-hf``; sampling, sequence log-probs, the RLOO and DPO objectives, Adam, the
gradient clipping and the learning-rate schedule are written below. What is shared with nemo-rpo is only
what defines the *task*: the byte tokenizer's ids, the synthetic prompts and judge, and the data order
(``nemo_rpo.data.sampler.GlobalBatchSampler``, so that seed ``s`` visits the same prompts at the same
steps in both implementations).

Online (paper Alg. 2 with K samples, RLOO of Ahmadian et al. 2024): each step takes ``batch`` prompts,
samples ``k`` responses from the current policy at temperature 1 (at most ``max_new_tokens``, stopping
after ``eos``), scores them with the judge and takes one Adam step on the REINFORCE surrogate with a
leave-one-out baseline on the KL-penalised reward ``R_k = eta r_k - beta log(pi/pi_ref)(y_k)``::

    A_k = R_k - 1/(K-1) sum_{j != k} R_j           (R detached)
    loss = -(beta K/(K-1)) * mean_prompts sum_k A_k log pi(y_k | x)

The factor ``beta K/(K-1)`` makes the gradient equal to that of rpo_sqloo with eta=1 (paper §3.4:
d sqloo / d log pi_k = -beta K/(K-1) A_k); Adam is invariant to a constant factor except through the
gradient clipping, so matching it keeps the clipping identical.

Offline DPO: ``-log sigmoid(beta ((log pi - log pi_ref)(y_c) - (log pi - log pi_ref)(y_r)))``, averaged
over the batch, with the reference log-probs computed once at the initial weights.

Both use Adam (beta1 0.9, beta2 0.999, eps 1e-8, no weight decay), global-norm clipping at 1.0 and
megatron's schedule (``lr * s / warmup`` for ``s <= warmup``, then cosine to ``min_lr`` at
``max_steps``; ``s`` = updates already taken, so the first update has lr 0 when warmup is on).

Run (CPU, one process; ``compare.py`` drives it)::

    python benchmarks/learning_reference/reference.py online --hf runs/lr/sft_hf --seed 1 --out ref.jsonl
    python benchmarks/learning_reference/reference.py dpo --hf runs/lr/sft_hf --data prefs.jsonl --seed 1 --out d.jsonl
    python benchmarks/learning_reference/reference.py evaluate --hf some_hf_dir
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from nemo_rpo.data.sampler import GlobalBatchSampler
from nemo_rpo.data.synthetic import make_synthetic_preferences
from nemo_rpo.data.tokenizer import ByteTokenizer
from nemo_rpo.rewards.judges import load_judge, synthetic_task_reward

TOKENIZER = ByteTokenizer()
PROMPT_SEED = 0  # nemo-rpo's embedded online prompt set: make_synthetic_preferences(512, 2, seed=0)
EVAL_SEED = 2  # held-out prompts for `evaluate`


# --------------------------------------------------------------------------------------------------
# model, sampling, log-probs
# --------------------------------------------------------------------------------------------------


def load_policy(hf_dir: str):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    return model


def encode_prompt(text: str) -> list[int]:
    return [TOKENIZER.bos_id, *TOKENIZER.encode(text)]


_MIX = 0x9E3779B97F4A7C15


def coupled_uniforms(seed: int, step: int, rows: int, positions: int) -> torch.Tensor:
    """``[positions, rows]`` U[0, 1) draws of nemo-rpo's documented sampling stream for ``step``.

    nemo-rpo seeds a CPU generator with ``(seed * 0x9E3779B97F4A7C15 + step) mod (2^63 - 1)`` per step
    and draws one float64 uniform per row for each position from the shortest prompt on, turning it
    into a token by inverting the CDF. Reproducing that stream (common random numbers) makes the two
    implementations draw the same samples while their policies agree, so trajectories can be compared
    step by step; the default ``multinomial`` sampler shares nothing with nemo-rpo.
    """
    gen = torch.Generator().manual_seed((seed * _MIX + step) % (2**63 - 1))
    return torch.stack([torch.rand(rows, generator=gen, dtype=torch.float64) for _ in range(positions)])


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The first token whose cumulative probability exceeds ``u * total`` (``probs`` ``[N, V]``)."""
    cdf = probs.double().cumsum(-1)
    idx = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return torch.where(idx < probs.shape[-1], idx, cdf.argmax(-1))


@torch.no_grad()
def sample(
    model,
    prompts: Sequence[list[int]],
    k: int,
    max_new_tokens: int,
    gen: torch.Generator | None,
    temperature: float = 1.0,
    uniforms: torch.Tensor | None = None,
) -> list[list[int]]:
    """``k`` responses per prompt (prompt-major), each ending with eos unless cut at ``max_new_tokens``.

    Rows are grouped by prompt length, so every group is a dense batch and plain causal attention is
    exact (no padding, no attention mask); the whole prefix is re-run at every step (no KV cache).
    ``temperature=0`` is greedy; otherwise ``torch.multinomial`` with ``gen``, or, given ``uniforms``
    (:func:`coupled_uniforms`), the inverse CDF at ``uniforms[position - shortest prompt, row]``.
    """
    was_training = model.training
    model.eval()
    rows = [p for p in prompts for _ in range(k)]
    shortest = min(map(len, rows))
    out: list[list[int]] = [[] for _ in rows]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(rows):
        by_length.setdefault(len(p), []).append(i)
    for length, members in sorted(by_length.items()):
        tokens = torch.tensor([rows[i] for i in members], dtype=torch.long)
        done = torch.zeros(len(members), dtype=torch.bool)
        for t in range(max_new_tokens):
            logits = model(input_ids=tokens).logits[:, -1, : TOKENIZER.vocab_size].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            elif uniforms is not None:
                nxt = _inverse_cdf(
                    torch.softmax(logits / temperature, -1), uniforms[length + t - shortest, members]
                )
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            for j, i in enumerate(members):
                if not done[j]:
                    out[i].append(int(nxt[j]))
            done |= nxt == TOKENIZER.eos_id
            if bool(done.all()):
                break
            tokens = torch.cat([tokens, nxt.unsqueeze(-1)], dim=1)
    model.train(was_training)
    return out


def sequence_logps(model, prompts: Sequence[list[int]], responses: Sequence[list[int]]) -> torch.Tensor:
    """``[N]`` summed log pi(response | prompt) by teacher forcing (right-padded, causal, no mask needed)."""
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), TOKENIZER.pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, len(p) - 1 : len(s) - 1] = 1.0  # position t predicts token t + 1
    logits = model(input_ids=ids).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1)


# --------------------------------------------------------------------------------------------------
# optimizer schedule
# --------------------------------------------------------------------------------------------------


def lr_at(updates: int, *, lr: float, min_lr: float, warmup: int, max_steps: int, style: str) -> float:
    """Megatron's OptimizerParamScheduler: linear warmup from 0, then constant / linear / cosine."""
    if warmup > 0 and updates <= warmup:
        return lr * updates / warmup
    if style == "constant":
        return lr
    decay = max(max_steps, warmup + 1)
    if updates > decay:
        return min_lr
    ratio = (updates - warmup) / (decay - warmup)
    coeff = 1.0 - ratio if style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return min_lr + coeff * (lr - min_lr)


def make_optimizer(model, args) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def apply_update(model, optimizer, loss: torch.Tensor, lr: float, clip: float) -> float:
    """Backward, clip the global gradient norm, one Adam step at ``lr``; returns the pre-clip norm."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    if clip > 0:
        coeff = clip / (float(norm) + 1e-6)
        if coeff < 1.0:
            for p in params:
                p.grad.mul_(coeff)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    return float(norm)


# --------------------------------------------------------------------------------------------------
# online RLOO
# --------------------------------------------------------------------------------------------------


def rloo_loss(
    *, policy_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float, eta: float
) -> torch.Tensor:
    """REINFORCE with a leave-one-out baseline on ``eta r - beta log(pi/pi_ref)``, ``[B, K]`` inputs."""
    k = policy_logps.shape[-1]
    shaped = eta * rewards - beta * (policy_logps.detach() - ref_logps)
    others = (shaped.sum(-1, keepdim=True) - shaped) / (k - 1)  # mean of the other K-1
    advantages = shaped - others
    return -(beta * k / (k - 1)) * (advantages * policy_logps).sum(-1).mean()


def train_online(args) -> None:
    torch.manual_seed(args.seed)
    policy = load_policy(args.hf)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = make_optimizer(policy, args)
    texts = [r["prompt"] for r in make_synthetic_preferences(512, 2, seed=PROMPT_SEED)]
    prompts = [encode_prompt(t) for t in texts]
    order = GlobalBatchSampler(len(prompts), args.batch, seed=args.seed, shuffle=True)
    gen = torch.Generator().manual_seed(10_007 * args.seed + 1)
    judge = load_judge(args.judge)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as log:
        for step in range(args.steps):
            tick = time.perf_counter()
            idx = order.indices_for_step(step)
            batch = [prompts[i] for i in idx]
            uniforms = None
            if args.sampler == "coupled":
                longest = max(map(len, batch)) + args.max_new_tokens
                uniforms = coupled_uniforms(
                    args.seed, step, len(batch) * args.k, longest - min(map(len, batch))
                )
            responses = sample(policy, batch, args.k, args.max_new_tokens, gen, uniforms=uniforms)
            rows = [p for p in batch for _ in range(args.k)]
            row_texts = [texts[i] for i in idx for _ in range(args.k)]
            rewards = torch.tensor(judge(row_texts, [TOKENIZER.decode(r) for r in responses]))
            rewards = rewards.view(len(batch), args.k)
            with torch.no_grad():
                ref_logps = sequence_logps(reference, rows, responses).view(len(batch), args.k)
            policy_logps = sequence_logps(policy, rows, responses).view(len(batch), args.k)
            loss = rloo_loss(policy_logps=policy_logps, ref_logps=ref_logps, rewards=rewards,
                             beta=args.beta, eta=args.eta)  # fmt: skip
            lr = lr_at(step, lr=args.lr, min_lr=args.min_lr, warmup=args.warmup, max_steps=args.steps,
                       style=args.decay)  # fmt: skip
            norm = apply_update(policy, optimizer, loss, lr, args.clip)
            row = {
                "step": step + 1,
                "reward": float(rewards.mean()),
                "reward_std": float(rewards.std(unbiased=False)),
                "kl": float((policy_logps.detach() - ref_logps).mean()),
                "loss": float(loss.detach()),
                "lr": lr,
                "grad_norm": norm,
                "response_length": sum(map(len, responses)) / len(responses),
                "step_time_s": time.perf_counter() - tick,
            }
            log.write(json.dumps(row) + "\n")
            log.flush()
    if args.save:
        policy.save_pretrained(args.save)


# --------------------------------------------------------------------------------------------------
# offline DPO
# --------------------------------------------------------------------------------------------------


def read_pairs(path: str) -> list[tuple[list[int], list[int], list[int]]]:
    """``(prompt, chosen, rejected)`` token ids from a native K=2 file: chosen = higher reward (ties: file order)."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        order = sorted(range(2), key=lambda i: -record["rewards"][i])
        chosen, rejected = (record["responses"][i] for i in order)
        eos = [TOKENIZER.eos_id]
        pairs.append((encode_prompt(record["prompt"]), TOKENIZER.encode(chosen) + eos,
                      TOKENIZER.encode(rejected) + eos))  # fmt: skip
    return pairs


def pair_logps(model, pairs) -> torch.Tensor:
    """``[B, 2]`` (chosen, rejected) sequence log-probs."""
    prompts = [p for p, _, _ in pairs for _ in range(2)]
    responses = [r for _, c, rj in pairs for r in (c, rj)]
    return sequence_logps(model, prompts, responses).view(len(pairs), 2)


def train_dpo(args) -> None:
    torch.manual_seed(args.seed)
    policy = load_policy(args.hf)
    optimizer = make_optimizer(policy, args)
    pairs = read_pairs(args.data)
    with torch.no_grad():
        ref = torch.cat([pair_logps(policy, pairs[i : i + 64]) for i in range(0, len(pairs), 64)])
    order = GlobalBatchSampler(len(pairs), args.batch, seed=args.seed, shuffle=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as log:
        for step in range(args.steps):
            tick = time.perf_counter()
            idx = order.indices_for_step(step)
            logps = pair_logps(policy, [pairs[i] for i in idx])
            ratios = logps - ref[idx]
            margin = args.beta * (ratios[:, 0] - ratios[:, 1])
            loss = -F.logsigmoid(margin).mean()
            lr = lr_at(step, lr=args.lr, min_lr=args.min_lr, warmup=args.warmup, max_steps=args.steps,
                       style=args.decay)  # fmt: skip
            norm = apply_update(policy, optimizer, loss, lr, args.clip)
            margin = margin.detach()
            accuracy = float(torch.where(margin == 0, 0.5, (margin > 0).float()).mean())
            row = {"step": step + 1, "loss": float(loss.detach()), "accuracy": accuracy,
                   "implicit_margin": float(margin.mean()), "lr": lr, "grad_norm": norm,
                   "step_time_s": time.perf_counter() - tick}  # fmt: skip
            log.write(json.dumps(row) + "\n")
            log.flush()
    if args.save:
        policy.save_pretrained(args.save)


# --------------------------------------------------------------------------------------------------
# evaluation (the same function scores both implementations' final policies)
# --------------------------------------------------------------------------------------------------


def evaluate(model, num_prompts: int, k: int, max_new_tokens: int, seed: int = 0) -> dict[str, float]:
    """Mean judge reward on held-out synthetic prompts: greedy, and ``k`` samples at temperature 1."""
    texts = [r["prompt"] for r in make_synthetic_preferences(num_prompts, 2, seed=EVAL_SEED)]
    prompts = [encode_prompt(t) for t in texts]
    result = {}
    for name, temperature, samples in (("greedy", 0.0, 1), ("sampled", 1.0, k)):
        gen = torch.Generator().manual_seed(seed)
        responses = sample(model, prompts, samples, max_new_tokens, gen, temperature=temperature)
        rows = [t for t in texts for _ in range(samples)]
        scores = synthetic_task_reward(rows, [TOKENIZER.decode(r) for r in responses])
        result[f"eval_reward_{name}"] = sum(scores) / len(scores)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("online", "dpo"):
        p = sub.add_parser(name)
        p.add_argument("--hf", required=True, help="start weights: a nemo-rpo-convert mcore-to-hf directory")
        p.add_argument("--out", required=True, help="metrics JSONL, one row per step")
        p.add_argument("--seed", type=int, default=1234)
        p.add_argument("--steps", type=int, default=60)
        p.add_argument("--batch", type=int, default=32, help="prompts per step")
        p.add_argument("--lr", type=float, default=3e-3)
        p.add_argument("--min-lr", type=float, default=0.0)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--decay", choices=("constant", "linear", "cosine"), default="cosine")
        p.add_argument("--clip", type=float, default=1.0)
        p.add_argument("--beta", type=float, default=0.1)
        p.add_argument("--save", default=None, help="write the final policy here (HF format)")
        p.add_argument("--threads", type=int, default=1)
        if name == "online":
            p.add_argument("--k", type=int, default=4)
            p.add_argument("--eta", type=float, default=1.0)
            p.add_argument("--max-new-tokens", type=int, default=12)
            p.add_argument("--judge", default="nemo_rpo.rewards.judges:synthetic_task_reward")
            p.add_argument(
                "--sampler",
                choices=("multinomial", "coupled"),
                default="multinomial",
                help="coupled: nemo-rpo's random stream, for step-by-step comparison",
            )
        else:
            p.add_argument("--data", required=True, help="native K=2 preference JSONL")
    ev = sub.add_parser("evaluate")
    ev.add_argument("--hf", required=True)
    ev.add_argument("--prompts", type=int, default=256)
    ev.add_argument("--k", type=int, default=4)
    ev.add_argument("--max-new-tokens", type=int, default=12)
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "online":
        train_online(args)
    elif args.command == "dpo":
        train_dpo(args)
    else:
        result = json.dumps(evaluate(load_policy(args.hf), args.prompts, args.k, args.max_new_tokens))
        print(result)
        if args.out:
            Path(args.out).write_text(result + "\n")


if __name__ == "__main__":
    main()
