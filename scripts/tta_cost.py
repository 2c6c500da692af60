"""Cost of TTA on this machine: seconds and peak memory per configuration, each measured in a
fresh subprocess with reblur-bench's timer (``reblur_deploy.bench.timing.timed``: the largest
increase of the resident set on a CPU, peak allocated memory on CUDA).

    python scripts/tta_cost.py [--device cpu] [--size 720x1280] [--steps 1]

Prints one Markdown table row per configuration; docs/TTA.md records the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIGS = {
    "inference (no TTA)": {"steps": 0},
    "Algorithm A, full frame": {},
    "crop TTA 4×256²": {"crop": 256, "crops": 4},
}


def measure(config: dict, device: str, size: tuple[int, int], steps: int) -> dict:
    import torch

    from reblur_deploy.bench.timing import timed
    from reblur_deploy.models import build
    from reblur_deploy.tta import adapt

    torch.manual_seed(0)
    md, mr = build("unet").to(device), build("reblur").to(device)
    x = torch.rand(1, 3, *size, device=device)
    options = {"steps": steps, **config}
    adapt(x[..., :64, :64], md, mr, **{**options, "crop": None, "steps": 1})  # warm-up
    seconds, peak = timed(lambda: adapt(x, md, mr, **options), torch.device(device), 1, 0)
    return {"seconds": seconds, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="720x1280", help="H×W of the frame")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.one:
        print(json.dumps(measure(CONFIGS[args.one], args.device, size, args.steps)))
        return
    print(f"| {args.size}, {args.steps} step(s), {args.device} | seconds | peak MiB |")
    print("|---|---|---|")
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--one", name, "--device", args.device,
               "--size", args.size, "--steps", str(args.steps)]  # fmt: skip
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(f"| {name} | {result['seconds']:.2f} | {result['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
