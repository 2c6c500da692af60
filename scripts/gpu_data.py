"""Copy the subset of ../shared/data that scripts/gpu_train.sh trains on into scripts/gpu_data/.

    python scripts/gpu_data.py            # then: run(..., carry=["scripts/gpu_data"])

A lent GPU machine sees only the repository and what travels with it (64 MiB in all), so the
subset is chosen to fit (about 45 MB): the held-out pairs of the bundled models (val/), and for
training 5 GOPRO pairs, GOPRO Istanbul, 50 REDS pairs and the 24 Kodak photographs. The folder
is ignored by git.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "gpu_data"
HELD_OUT = {"gopro": ["blur_04.png", "461_blur.png"], "gopro_more": ["Flower_blur.png"]}


def copy_pair(folder: Path, name: str, target: Path) -> None:
    for kind, file in (("blur", name), ("sharp", name.replace("blur", "sharp"))):
        (target / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / kind / file, target / kind / file)


def main() -> int:
    if not SHARED.is_dir():
        print(f"error: {SHARED} not found", file=sys.stderr)
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    for source, names in HELD_OUT.items():
        for name in names:
            copy_pair(SHARED / source, name, OUT / "val")
    for path in sorted((SHARED / "gopro" / "blur").glob("*.png")):
        if path.name not in HELD_OUT["gopro"]:
            copy_pair(SHARED / "gopro", path.name, OUT / "train" / "gopro")
    copy_pair(SHARED / "gopro_more", "Istanbul_blur.png", OUT / "train" / "gopro")
    reds = SHARED / "train" / "reds027_x4"
    for path in sorted((reds / "blur").glob("*.png"))[::2]:
        copy_pair(reds, path.name, OUT / "train" / "reds")
    shutil.copytree(SHARED / "train" / "sharp_photos" / "kodak24", OUT / "train" / "photos")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
