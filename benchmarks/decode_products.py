"""What the weight products of one decoding step cost, against what the memory could deliver (issue 20, item 3).

    python benchmarks/decode_products.py [--rounds 3]

SmolLM2-135M's 30 layers at 32 rows (8 prompts x K=4), fp32, 2 threads, random weights: the QKV
``[960 x 576]``, output ``[576 x 576]``, MLP-in ``[3,072 x 576]`` and MLP-out ``[576 x 1,536]`` products of
every layer (distinct weights, 425 MB: they do not stay in cache from one layer to the next), then the
49,152-row LM head, three ways: ``F.linear`` on the ``[out, in]`` weights (MKL; what ``generate`` runs),
``torch.mm`` on contiguous ``[in, out]`` copies (MKL; what nemo-rpo's lean decoding step runs for the
layers) and oneDNN on weights packed once for 32 rows (``torch.ops.mkldnn._reorder_linear_weight``). Beside them: a 512 MB
``sum`` (the read bandwidth the products could approach) and one MLP-in product repeated on the same
weight (cache-resident: the compute rate). Prints median times per round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
LAYERS, ROWS, VOCAB = 30, 32, 49152


def median_time(fn, repeats: int = 7) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    weights = [[torch.randn(o, i) * 0.02 for o, i in SHAPES] for _ in range(LAYERS)]
    inputs = {i: torch.randn(ROWS, i) for _, i in SHAPES}
    transposed = [[w.t().contiguous() for w in layer] for layer in weights]
    packed = [[torch.ops.mkldnn._reorder_linear_weight(w, ROWS) for w in layer] for layer in weights]
    head = torch.randn(VOCAB, 576) * 0.02
    head_packed = torch.ops.mkldnn._reorder_linear_weight(head, ROWS)
    big = torch.randn(128 * 1024 * 1024)
    layer_bytes = sum(w.numel() for layer in weights for w in layer) * 4

    def layers_mkl() -> None:
        for layer in weights:
            for w in layer:
                torch.nn.functional.linear(inputs[w.shape[1]], w)

    def layers_mkl_nn() -> None:
        for layer in transposed:
            for w in layer:
                torch.mm(inputs[w.shape[0]], w)

    def layers_onednn() -> None:
        for layer in packed:
            for w, (_, i) in zip(layer, SHAPES):
                torch.ops.mkldnn._linear_pointwise(inputs[i], w, None, "none", [], "")

    w = weights[0][2]
    diff = (torch.nn.functional.linear(inputs[576], w) - torch.ops.mkldnn._linear_pointwise(
        inputs[576], packed[0][2], None, "none", [], "")).abs().max().item()  # fmt: skip
    print(f"oneDNN packed vs MKL, one MLP-in product: max |diff| {diff:.1e} (another summation order)")
    for r in range(1, args.rounds + 1):
        read = median_time(lambda: big.sum())
        hot = median_time(lambda: torch.nn.functional.linear(inputs[576], w), 21)
        mkl, mkl_nn, onednn = median_time(layers_mkl), median_time(layers_mkl_nn), median_time(layers_onednn)
        head_mkl = median_time(lambda: torch.nn.functional.linear(inputs[576], head))
        head_onednn = median_time(
            lambda: torch.ops.mkldnn._linear_pointwise(inputs[576], head_packed, None, "none", [], "")
        )
        print(f"round {r}: read {big.numel() * 4 / read / 1e9:.1f} GB/s | one MLP-in product, cached: "
              f"{2 * ROWS * w.numel() / hot / 1e9:.0f} GFLOP/s | 30 layers MKL {mkl * 1e3:.1f} ms "
              f"({layer_bytes / mkl / 1e9:.1f} GB/s of weights), [in, out] copies {mkl_nn * 1e3:.1f} ms, oneDNN packed {onednn * 1e3:.1f} ms | "
              f"LM head MKL {head_mkl * 1e3:.1f} ms, oneDNN packed {head_onednn * 1e3:.1f} ms", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
