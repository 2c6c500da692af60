"""Training speed on this machine: iterations per second and the share of its measured peak.

    python scripts/train_speed.py [--iters 20] [--out FILE.md]

For each model (the bundled models' shapes: `unet-lite` and the paper's U-Net, each with its
MR) and each precision (fp32, bf16 autocast) and memory layout (contiguous, channels-last):
the rate of ``Trainer.step`` (joint mode: MD step + MR step, batch 8, 128² crops, real GOPRO
crops), after 3 warm-up steps. The FLOPs of one step are counted with
``torch.utils.flop_counter`` (forward and backward of both steps); the machine's peak is the
best rate of a 2048² matrix product in the same precision. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from reblur_deploy.bench.machine import bf16_units, cpu_name, matmul_peak
from reblur_deploy.train.config import TrainConfig
from reblur_deploy.train.loop import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gopro"
MODELS = {
    "unet-lite + MR n2 w16": ({"widths": [16, 32, 48], "n_blocks": 4}, 16),
    "paper U-Net + MR n2 w64": ({}, 64),
}


def trainer(md_config: dict, width: int, amp: str, channels_last: bool, out: Path) -> Trainer:
    config = TrainConfig.from_dict({
        "data": [f"paired:{DATA}"], "md_config": md_config, "mr_width": width, "crop": 128,
        "batch_size": 8, "iters": 1, "amp": amp, "channels_last": channels_last,
        "device": "cpu", "progress": False, "tensorboard": "off", "out": str(out),
    })  # fmt: skip
    return Trainer(config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="timed steps per row")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--scratch", type=Path, default=Path("runs/train_speed"))
    args = parser.parse_args()
    cpu = torch.device("cpu")
    peaks = {
        "fp32": matmul_peak(cpu, torch.float32, 2048),
        "bf16": matmul_peak(cpu, torch.bfloat16, 2048),
    }
    lines = [
        f"{cpu_name()} ({', '.join(bf16_units()) or 'no bf16 units'}), "
        f"{torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; peak (2048² matmul): "
        f"fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s.",
        "",
        "| model | precision | layout | GFLOP / step | steps/s | GFLOP/s | share of peak |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, (md_config, width) in MODELS.items():
        for amp in ("off", "bf16"):
            for channels_last in (False, True):
                t = trainer(md_config, width, amp, channels_last, args.scratch)
                layout = torch.channels_last if channels_last else torch.contiguous_format
                blurry, sharp = (x.to(memory_format=layout) for x in next(iter(t.loader())))
                with FlopCounterMode(display=False) as counter:
                    t.step(blurry, sharp)
                flops = counter.get_total_flops()
                for _ in range(2):
                    t.step(blurry, sharp)
                start = time.perf_counter()
                for _ in range(args.iters):
                    t.step(blurry, sharp)
                rate = args.iters / (time.perf_counter() - start)
                precision = "bf16" if amp == "bf16" else "fp32"
                achieved = flops * rate
                lines.append(
                    f"| {name} | {precision} | {'channels-last' if channels_last else 'NCHW'} | "
                    f"{flops / 1e9:.1f} | {rate:.2f} | {achieved / 1e9:.0f} | "
                    f"{100 * achieved / peaks[precision]:.0f} % |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
