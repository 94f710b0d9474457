"""The decoding step of this checkout against another git revision's, in one process (A/B).

Whole ``generate`` calls on a shared VM swing by 10-20% from call to call, more than a change to the
one-token step is worth, so this times the step itself: both revisions' ``CachedDecoder`` built on the
same SmolLM2-135M-Instruct model (``bench_sampling.py``'s real weights, fp32), the same 8 x 4 rows
prefilled with the same ``--prompt-len``-token prompts (once per prompt, ``repeats`` 4) and stepped to
cache column ``--pos`` (every column before it written), then ``_lean_step`` at that column timed
``--steps`` times per variant per round, the two variants alternating their order from round to round.
It also checks that one step's logits agree between the revisions (bitwise or not).

Usage:
  python benchmarks/ab_decode_step.py --rev HEAD~1 --rounds 10
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = "nemo_rpo/generation/cached_decoder.py"


def load_revision(rev: str):  # noqa: ANN201 - a module
    """``cached_decoder`` as it is at git revision ``rev``, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:{MODULE}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "cached_decoder_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("cached_decoder_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rev", required=True, help="the git revision to compare with (A); B is this checkout"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--prompt-len", type=int, default=40, help="tokens per prompt (8 prompts)")
    parser.add_argument("--pos", type=int, default=100, help="the cache column the timed steps attend up to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="runs/bench_sampling")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_sampling
    import torch

    from nemo_rpo.generation import cached_decoder

    torch.set_num_threads(args.threads)
    model, _ = bench_sampling.build_megatron(bench_sampling.prepare(Path(args.work)))
    model.eval()
    if args.pos <= args.prompt_len:
        parser.error("--pos must be past the prompt (--prompt-len)")
    generator = torch.Generator().manual_seed(0)
    rows, prompts = 8 * 4, torch.randint(0, 1000, (8, args.prompt_len), generator=generator)
    variants = {args.rev: load_revision(args.rev), "this checkout": cached_decoder}
    with torch.no_grad():
        decoders = {}
        for name, module in variants.items():
            decoders[name] = module.CachedDecoder(model, rows, args.pos + 2)
            decoders[name].prefill(prompts, 4)
        for _ in range(args.prompt_len, args.pos):  # columns prompt_len .. pos - 1, the same tokens for both
            ids = torch.randint(0, 1000, (rows,), generator=generator)
            a, b = (decoder.step(ids) for decoder in decoders.values())
        print(
            f"logits at column {args.pos - 1}: bitwise equal {torch.equal(a, b)}, max |difference| "
            f"{(a - b).abs().max().item():.3g}"
        )
        ids = torch.arange(rows) * 7
        a, b = (decoder.step(ids) for decoder in decoders.values())
        print(
            f"one step's logits: bitwise equal {torch.equal(a, b)}, max |difference| {(a - b).abs().max().item():.3g}"
        )
        hidden = torch.randn(rows, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
        times = {name: [] for name in variants}
        for r in range(args.rounds):
            for name in list(variants)[:: 1 if r % 2 == 0 else -1]:
                decoder = decoders[name]
                decoder._lean_step(hidden, args.pos)
                start = time.perf_counter()
                for _ in range(args.steps):
                    decoder._lean_step(hidden, args.pos)
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    (name_a, ms_a), (name_b, ms_b) = times.items()
    print(f"ms per step at column {args.pos}: {name_a} {[round(x, 1) for x in ms_a]}")
    print(f"ms per step at column {args.pos}: {name_b} {[round(x, 1) for x in ms_b]}")
    per_round = [round(x / y, 3) for x, y in zip(ms_a, ms_b, strict=True)]
    print(f"medians {statistics.median(ms_a):.1f} vs {statistics.median(ms_b):.1f} ms: {name_a} / {name_b} "
          f"{statistics.median(ms_a) / statistics.median(ms_b):.3f} (per round {per_round})")  # fmt: skip


if __name__ == "__main__":
    main()
