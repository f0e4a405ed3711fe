"""Peak memory of layer-sequential vs whole-model capture on the default model, and a projection to Llama-2-7B.

Usage: ``python benchmarks/bench_memory.py [--model smollm2-135m] [--sequences 16] [--length 512]``.
Each capture mode runs in a fresh subprocess, which reports its peak RSS (``ru_maxrss``), its RSS after
loading the model, and the peak above that during capture (``VmHWM`` reset after the load,
:mod:`measure.capture.memory`). The sequential run also records each block's peak above the block's start
(:class:`measure.capture.memory.BlockMemoryLog`).

Per-block model (bytes; B·L tokens per batch, N·L cached tokens, h hidden, i intermediate, a bytes per
activation, w per weight), for a Llama-style block whose largest Gram is the i×i one of ``down``:

* block parameters 4h² + 3hi weights (q, k, v, o without grouped-query attention; gate, up, down), × w;
* block outputs of every cached batch, N·L·h·a (the inputs already exist when the block starts);
* the block's Grams, float64: 8·(3h² + i²) (q/k/v share one, o one, gate/up one, down one);
* one batch's MLP activations (gate, up, their product) 3·B·L·i·a, and the Gram product of ``down``: its
  float32 copy of the input B·L·i·4 when a ≠ 4, the float32 product i²·4, and on the CPU the float64 sum i²·8.

On the CPU every part lives in RAM; the measured per-block peak on the default model checks the model (the
ratio measured / modelled is printed). On a GPU (Llama-2-7B, float16) the block's parameters, one batch's
input and output (2·B·L·h·a), its activations and the Gram product are on the accelerator; the cached hidden
states in and out (2·N·L·h·a), the Grams and the waiting weights stay on the host.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
from dataclasses import dataclass

MODES = ("full", "sequential")
KIB = 1024
FLOAT32, FLOAT64 = 4, 8


@dataclass(frozen=True)
class Dimensions:
    """What the per-block memory of a Llama-style model depends on."""

    name: str
    blocks: int
    hidden: int
    intermediate: int
    vocabulary: int

    def block_parameters(self) -> int:
        """4h² + 3hi (norms are negligible)."""
        return 4 * self.hidden**2 + 3 * self.hidden * self.intermediate

    def parameters(self) -> int:
        """Every block, the input embeddings and an untied output head."""
        return self.blocks * self.block_parameters() + 2 * self.vocabulary * self.hidden

    def gram_bytes(self) -> int:
        """8·(3h² + i²)."""
        return FLOAT64 * (3 * self.hidden**2 + self.intermediate**2)

    def batch_work_bytes(self, batch_tokens: int, activation_bytes: int, on_cpu: bool) -> int:
        """MLP activations of one batch plus the Gram product of ``down`` (module docstring)."""
        mlp = 3 * batch_tokens * self.intermediate * activation_bytes
        cast = 0 if activation_bytes == FLOAT32 else batch_tokens * self.intermediate * FLOAT32
        product = self.intermediate**2 * (FLOAT32 + (FLOAT64 if on_cpu else 0))
        return mlp + cast + product


LLAMA2_7B = Dimensions("Llama-2-7B", blocks=32, hidden=4096, intermediate=11008, vocabulary=32000)


def child(mode: str, model_name: str, sequences: int, length: int, batch_size: int) -> dict:
    """Load the model, capture in ``mode``, and return the memory figures (runs in its own process)."""
    from measure.models.architecture import describe
    from measure.data.calibration import CalibrationProtocol, calibration_batches
    from measure.capture.statistics import capture
    from measure.capture.memory import BlockMemoryLog, peak_rss_bytes, reset_peak_rss, rss_bytes
    from measure.models.load import load_model
    from measure.data.text import calibration_text

    loaded = load_model(model_name)
    protocol = CalibrationProtocol(sequences=sequences, sequence_length=length, batch_size=batch_size)
    batches = calibration_batches(loaded.tokenizer, calibration_text(), protocol)
    after_load = rss_bytes()
    reset_peak_rss()
    block_log = BlockMemoryLog("cpu")
    capture(loaded.model, batches, mode=mode, block_hooks=block_log.hooks if mode == "sequential" else None)
    block_log.finish()
    capture_peak = peak_rss_bytes()
    config = loaded.model.config
    first_block = describe(loaded.model).blocks[0].module
    return {
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB,
        "rss_after_load_bytes": after_load,
        "capture_peak_above_load_bytes": capture_peak - after_load,
        "block_peaks_bytes": [reading.delta_bytes for reading in block_log.peaks.values()],
        "block_parameter_bytes": sum(p.numel() * p.element_size() for p in first_block.parameters()),
        "dimensions": [config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size],
    }


def run_child(mode: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--sequences",
               str(args.sequences), "--length", str(args.length), "--batch-size", str(args.batch_size)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def mib(count: float) -> str:
    return f"{count / KIB**2:,.1f} MiB"


def gib(count: float) -> str:
    return f"{count / KIB**3:,.2f} GiB"


def modelled_cpu_block_peak(dims: Dimensions, sequences: int, length: int, batch_size: int) -> dict[str, int]:
    """Parts of one block's peak above its start on the CPU in float32 (module docstring)."""
    return {
        "block outputs": sequences * length * dims.hidden * FLOAT32,
        "Grams": dims.gram_bytes(),
        "one batch's MLP activations + down's Gram product": dims.batch_work_bytes(
            batch_size * length, FLOAT32, on_cpu=True
        ),
    }


def llama_projection(sequences: int, length: int, batch_size: int, scale: float) -> dict[str, dict[str, float]]:
    """Llama-2-7B on a GPU in float16, per block, each part multiplied by the measured/modelled ``scale``."""
    dims, half = LLAMA2_7B, 2
    batch = batch_size * length
    accelerator = {
        "block parameters": dims.block_parameters() * half,
        "one batch in + out": 2 * batch * dims.hidden * half,
        "one batch's MLP activations + down's Gram product": dims.batch_work_bytes(batch, half, False) * scale,
    }
    host = {
        "model weights (blocks wait here)": dims.parameters() * half,
        "cached hidden states in + out": 2 * sequences * length * dims.hidden * half,
        "one block's Grams (float64)": dims.gram_bytes(),
    }
    return {"accelerator": accelerator, "host": host}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        print(json.dumps(child(args.child, args.model, args.sequences, args.length, args.batch_size)))
        return
    runs = {mode: run_child(mode, args) for mode in MODES}
    full, sequential = runs["full"], runs["sequential"]
    blocks, hidden, intermediate, vocabulary = full["dimensions"]
    print(f"{args.model}: {blocks} blocks, hidden {hidden}, intermediate {intermediate}; calibration "
          f"{args.sequences} × {args.length} tokens in batches of {args.batch_size}; float32 on the CPU")
    for mode, run in runs.items():
        print(f"  {mode:>10} capture: peak RSS {mib(run['ru_maxrss_bytes'])} (after loading "
              f"{mib(run['rss_after_load_bytes'])}; capture adds {mib(run['capture_peak_above_load_bytes'])})")
    increment = sequential["capture_peak_above_load_bytes"] / full["capture_peak_above_load_bytes"]
    print(f"  ratio sequential / full: peak RSS {sequential['ru_maxrss_bytes'] / full['ru_maxrss_bytes']:.3f}, "
          f"capture increment {increment:.3f}")
    peaks = sorted(sequential["block_peaks_bytes"])
    dims = Dimensions(args.model, blocks, hidden, intermediate, vocabulary)
    parts = modelled_cpu_block_peak(dims, args.sequences, args.length, args.batch_size)
    scale = peaks[-1] / sum(parts.values())
    print(f"  per block (sequential): peak above the block's start median {mib(peaks[len(peaks) // 2])}, max "
          f"{mib(peaks[-1])}; block parameters {mib(sequential['block_parameter_bytes'])} "
          f"(model: {mib(dims.block_parameters() * FLOAT32)})")
    print(f"  modelled per-block peak {mib(sum(parts.values()))} = "
          + " + ".join(f"{name} {mib(value)}" for name, value in parts.items()))
    print(f"  measured / modelled per-block peak = {scale:.2f}")
    print(f"projection: {LLAMA2_7B.name} on one GPU, float16, layer-sequential, N × L = 128 × 2048, batch 8, "
          f"activation parts × {scale:.2f}")
    for place, projected in llama_projection(128, 2048, 8, scale).items():
        print(f"  {place}: {gib(sum(projected.values()))} = "
              + " + ".join(f"{name} {gib(value)}" for name, value in projected.items()))
    print(f"  (a pass that keeps every block's Grams, as measure.capture.statistics.capture does, holds "
          f"{gib(LLAMA2_7B.blocks * LLAMA2_7B.gram_bytes())} of Grams on the host instead of one block's)")


if __name__ == "__main__":
    main()
