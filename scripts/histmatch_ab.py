"""A/B timing of histogram-matching kernel variants in one process, calls interleaved.

This VM's speed drifts by tens of percent within seconds, so timings of two builds taken one
after the other cannot tell a 10 % change from noise. Here each variant (a copy of
reblur_deploy/kernels/csrc/histmatch.cpp with changes) is compiled under its own operator
namespace beside the installed kernel, and rounds of one call of each on the same 1280×720
frame (reblur-bench's histmatch case) give the speed-up as the median of the per-round ratios
(``reblur_deploy.bench.timing.interleaved_ratio``). Variants must give the installed kernel's
output and bounds bit for bit, unless named ``probe*`` (a variant that leaves a phase out, to
time it).

    python scripts/histmatch_ab.py my_variant.cpp [probe_nohist.cpp ...] [--rounds 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from reblur_deploy.bench.histmatch import sample_frames
from reblur_deploy.bench.timing import interleaved_ratio
from reblur_deploy.histmatch import HIST_BINS
from reblur_deploy.kernels import CPP_FLAGS, OPENMP, load_extension, source_dir

COMMON = source_dir() / "histmatch_common.h"


def build(variant: Path, work: Path):
    """The variant's hist_match_out, registered as reblur_ext_<stem>."""
    namespace = f"reblur_ext_{variant.stem}"
    source = variant.read_text().replace("reblur_ext", namespace)
    source = source.replace('#include "histmatch_common.h"', f'#include "{COMMON}"')
    path = work / f"{variant.stem}.cpp"
    path.write_text(source)
    folder = work / variant.stem
    folder.mkdir()
    load(name=f"ab_{variant.stem}", sources=[str(path)], extra_cflags=CPP_FLAGS,
         extra_ldflags=OPENMP, build_directory=str(folder), is_python_module=False)  # fmt: skip
    return getattr(torch.ops, namespace).hist_match_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    if not load_extension():
        raise SystemExit("the installed kernel does not build here")
    ops = {"installed": torch.ops.reblur_ext.hist_match_out}
    with tempfile.TemporaryDirectory() as work:
        for variant in args.variants:
            ops[variant.stem] = build(variant, Path(work))
    source, reference = (  # 3 planes (one per channel) of a 720p frame
        torch.from_numpy(a).permute(2, 0, 1).reshape(3, -1).contiguous()
        for a in sample_frames((720, 1280))
    )
    outputs = {name: torch.empty_like(source) for name in ops}
    bounds = {name: op(source, reference, HIST_BINS, outputs[name]) for name, op in ops.items()}
    for name in ops:
        same = torch.equal(outputs[name], outputs["installed"])
        if not name.startswith("probe") and not (
            same and torch.equal(bounds[name], bounds["installed"])
        ):
            raise SystemExit(f"{name}: its result differs from the installed kernel's")

    def call(name: str):
        op, out = ops[name], outputs[name]
        return lambda: op(source, reference, HIST_BINS, out)

    for name in ops:
        if name == "installed":
            continue
        r = interleaved_ratio(call("installed"), call(name), args.rounds)
        print(f"{name}: median {r['other_s'] * 1e3:.2f} ms against the installed kernel's "
              f"{r['base_s'] * 1e3:.2f} ms, {r['median']:.3f}x its speed "
              f"(rounds {r['min']:.3f}-{r['max']:.3f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
