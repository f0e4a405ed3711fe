"""Cost of capturing every Gram, as a ratio to a plain forward pass over the same tokens (target ≤ 1.4×).

Usage: ``python benchmarks/bench_capture.py [--model smollm2-135m] [--sequences 4] [--seq-len 512]
[--threads 2] [--repeats 3]``. Times, on the same calibration windows, the minimum over repeats of

* a plain forward pass of the whole model (logits included): the baseline;
* per-linear ``X.T @ X`` hooks in float32, one per linear layer (what the reference GPTQ / SparseGPT code does);
* :func:`measure.capture.statistics.capture` in ``"full"`` mode (one Gram per shared input by the panel kernel,
  float64 accumulation, block statistics),

and prints each ratio to the baseline beside its arithmetic floor: (forward MACs + Gram MACs) / forward MACs,
with forward MACs per token = Σ out·in over every linear and the lm_head + 2·d·(L+1)/2 per attention layer
(causal QKᵀ and AV), per-linear Gram MACs = Σ in² over linear layers, and syrk Gram MACs = Σ in²/2 over
shared inputs (q/k/v read one Gram, gate/up one). Last, the three Gram kernels (x.T @ x, BLAS ``ssyrk``, the
panel kernel of :func:`measure.capture.gram.batch_gram_upper`), first swapped into the capture, then alone on one batch
of every input width: scipy's ``ssyrk`` wins alone, but inside the forward pass its OpenBLAS threads contend with
torch's own, so the capture uses the panel kernel on torch's GEMM.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from measure.capture import gram
from measure.models.architecture import Architecture, describe
from measure.data.calibration import CalibrationProtocol, calibration_batches
from measure.capture.statistics import capture
from measure.capture.gram import batch_gram_syrk, batch_gram_upper
from measure.models.load import load_model
from measure.data.text import calibration_text


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``run`` over ``repeats`` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_forward(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids, use_cache=False)


def per_linear_hooks(model: torch.nn.Module, arch: Architecture, batches: list[torch.Tensor]) -> None:
    """Forward with one float32 ``X.T @ X`` per linear layer, accumulated per layer (reference GPTQ style)."""
    grams = {ref.name: torch.zeros(ref.in_features, ref.in_features) for ref in arch.linears}

    def hook_for(name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            rows = args[0].reshape(-1, args[0].shape[-1]).float()
            grams[name] += rows.T @ rows

        return hook

    handles = [ref.module.register_forward_pre_hook(hook_for(ref.name)) for ref in arch.linears]
    try:
        plain_forward(model, batches)
    finally:
        for handle in handles:
            handle.remove()


def gram_kernels(arch: Architecture, tokens: int, repeats: int) -> list[tuple[int, float, float, float]]:
    """Seconds of x.T @ x, BLAS ssyrk and the panel kernel on a (tokens × n) float32 batch, per shared width n."""
    widths = sorted({ref.in_features for ref in arch.linears})
    rows = []
    for width in widths:
        x = torch.randn(tokens, width)
        rows.append((
            width,
            best_seconds(lambda x=x: x.T @ x, repeats),
            best_seconds(lambda x=x: batch_gram_syrk(x), repeats),
            best_seconds(lambda x=x: batch_gram_upper(x), repeats),
        ))  # fmt: skip
    return rows


def capture_with_kernel(kernel: Callable[[torch.Tensor], torch.Tensor], run: Callable[[], object]) -> None:
    """``run()`` with the capture's Gram kernel (:func:`measure.capture.gram.gram_panels`) replaced by ``kernel``, which
    returns the whole upper triangle of xᵀx as one panel (restored after)."""
    original = gram.gram_panels
    gram.gram_panels = lambda x: [(0, x.shape[-1], kernel(x))]
    try:
        run()
    finally:
        gram.gram_panels = original


def flop_floors(arch: Architecture, sequence_length: int) -> dict[str, float]:
    """Per-token MACs of the forward pass and of both Gram schemes, and the two floors (ratios)."""
    config = arch.config
    lm_head = arch.lm_head.weight.shape
    linear = sum(ref.out_features * ref.in_features for ref in arch.linears) + lm_head[0] * lm_head[1]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = len(arch.blocks) * 2 * config.num_attention_heads * head_dim * (sequence_length + 1) / 2
    forward = linear + attention
    per_linear = sum(ref.in_features**2 for ref in arch.linears)
    shared = {ref.shared_input_group: ref.in_features for ref in arch.linears}
    syrk = sum(size**2 / 2 for size in shared.values())
    return {
        "forward_macs": forward,
        "per_linear_floor": (forward + per_linear) / forward,
        "syrk_floor": (forward + syrk) / forward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, arch = loaded.model, describe(loaded.model)
    protocol = CalibrationProtocol(args.sequences, args.seq_len, args.sequences, bos=loaded.bos_per_window)
    batches = calibration_batches(loaded.tokenizer, calibration_text(), protocol)
    plain_forward(model, batches)
    baseline = best_seconds(lambda: plain_forward(model, batches), args.repeats)
    hooks = best_seconds(lambda: per_linear_hooks(model, arch, batches), args.repeats)
    ours = best_seconds(lambda: capture(model, batches, mode="full", arch=arch), args.repeats)
    floors = flop_floors(arch, args.seq_len)
    print(
        f"{loaded.model_id}: {args.sequences}x{args.seq_len} tokens, {args.threads} threads, "
        f"best of {args.repeats}; forward {floors['forward_macs'] / 1e6:.1f} M MACs/token"
    )
    print(f"plain forward          {baseline:7.3f} s   1.00x")
    rows = (
        ("per-linear X.T@X hooks", hooks, "per_linear_floor", ""),
        ("pvq capture (full)", ours, "syrk_floor", "   (target <= 1.40x)"),
    )
    for label, seconds, floor, note in rows:
        print(f"{label:<22} {seconds:7.3f} s   {seconds / baseline:.2f}x   FLOP floor {floors[floor]:.2f}x{note}")
    print("pvq capture (full) with each Gram kernel, inside the forward pass:")
    run = lambda: capture(model, batches, mode="full", arch=arch)  # noqa: E731
    kernels = (("x.T @ x", lambda x: x.T @ x), ("ssyrk", batch_gram_syrk), ("panels", None))
    for label, kernel in kernels:
        if kernel is None:
            seconds = best_seconds(run, args.repeats)
        else:
            seconds = best_seconds(lambda kernel=kernel: capture_with_kernel(kernel, run), args.repeats)
        print(f"  {label:<8} {seconds:7.3f} s   {seconds / baseline:.2f}x")
    tokens = args.sequences * args.seq_len
    print(f"Gram kernels alone on one {tokens}-token float32 batch (seconds; ratio to x.T @ x):")
    for width, matmul, syrk, panels in gram_kernels(arch, tokens, args.repeats):
        print(
            f"  n = {width:5d}: x.T @ x {matmul:.4f}   ssyrk {syrk:.4f} ({syrk / matmul:.2f}x)   "
            f"panels {panels:.4f} ({panels / matmul:.2f}x)"
        )


if __name__ == "__main__":
    main()
