"""Turn a training run's weight file into a bundled model of the package.

    python -m train.package runs/unet_joint/last.safetensors unet-reblur --fp16

Writes ``reblur_deploy/assets/weights/<name>.safetensors`` (``name`` must be one of
``reblur_deploy.weights.BUNDLED``), keeps the run's provenance, and records how the file was
packaged. ``--fp16`` stores the tensors in float16 (half the size; they load as float32): the
command deblurs the bundled sample with both files and refuses to write when the outputs differ
by more than ``--tolerance``. ``--tta-lr`` records the TTA learning rate measured for this
model (``tta_lr``): ``Deblurrer``, ``reblur-run`` and the element use it when no rate is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from reblur_deploy.atomic import atomic_path
from reblur_deploy.errors import ReblurError, WeightsError
from reblur_deploy.io import array_to_tensor, read_image
from reblur_deploy.pipeline import Deblurrer
from reblur_deploy.weights import ASSETS, BUNDLED, load_weights, save_weights

SAMPLE = ASSETS.parent / "samples" / "gopro_blur_00_crop.png"


def package(
    source: str,
    name: str,
    fp16: bool,
    tolerance: float,
    assets: Path = ASSETS,
    tta_lr: float | None = None,
) -> str:
    if name not in BUNDLED:
        raise WeightsError(f"{name!r} is not a bundled model name ({', '.join(BUNDLED)})")
    loaded = load_weights(source)
    if loaded.reblur is None and not name.endswith("-l1"):
        raise WeightsError(f"{source} has no reblurring module; {name!r} ships one")
    target = Path(assets) / f"{name}.safetensors"
    storage = torch.float16 if fp16 else None
    packaged = {"source_sha256": loaded.sha256, "storage": "float16" if fp16 else "float32"}
    if "packaged" in loaded.metadata:  # a bundled file packaged again: keep how it was made
        packaged["repackaged_from"] = loaded.metadata["packaged"]
    modules = {"deblur": loaded.deblur, "reblur": loaded.reblur}
    metadata = {"provenance": loaded.metadata.get("provenance"), "packaged": packaged}
    if tta_lr is not None:
        if not tta_lr > 0:
            raise WeightsError(f"--tta-lr must be positive, got {tta_lr}")
        metadata["tta_lr"] = tta_lr
    sample, _ = array_to_tensor(read_image(SAMPLE))
    reference = Deblurrer(loaded, device="cpu")(sample)
    with atomic_path(target) as candidate:  # the final name only once the check has passed
        save_weights(candidate, modules, metadata, storage_dtype=storage)
        diff = (Deblurrer(candidate, device="cpu")(sample) - reference).abs().max().item()
        if diff > tolerance:
            raise WeightsError(f"packaged outputs differ by {diff:.2e} > {tolerance:.0e}")
        packaged["sample_max_abs_diff"] = diff
        save_weights(candidate, modules, metadata, storage_dtype=storage)  # with the difference
    size = target.stat().st_size / 1e6
    return f"{target} ({size:.1f} MB, {packaged['storage']}; sample max |Δ| {diff:.1e})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="weight file written by python -m train.main")
    parser.add_argument("name", choices=sorted(BUNDLED), help="bundled model name")
    parser.add_argument("--fp16", action="store_true", help="store the tensors in float16")
    parser.add_argument("--tolerance", type=float, default=2e-3, help="on [0, 1] pixel values")
    parser.add_argument(
        "--assets", type=Path, default=ASSETS, help="write here instead of the package's assets"
    )
    parser.add_argument("--tta-lr", type=float, help="the TTA learning rate measured for it")
    args = parser.parse_args(argv)
    try:
        print(package(args.source, args.name, args.fp16, args.tolerance, args.assets, args.tta_lr))
    except ReblurError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
