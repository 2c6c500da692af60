"""Copy the subset of ../shared/data that scripts/gpu_train.sh trains on into scripts/gpu_data/.

    python scripts/gpu_data.py            # then: run(..., carry=["scripts/gpu_data"])

A lent GPU machine sees only the repository and what travels with it (64 MiB in all), so the
subset is chosen to fit: the held-out pairs (val/: every pair of ../shared/data/gopro, which
is never trained on, and Flower), and for training the 11 real 240-fps GOPRO pairs, GOPRO
Istanbul, 50 REDS pairs and the Kodak photographs that fit. The folder is ignored by git.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "gpu_data"
LIMIT = 60 * 2**20  # of the 64 MiB a GPU job may carry


def copy_pair(folder: Path, name: str, target: Path) -> None:
    for kind, file in (("blur", name), ("sharp", name.replace("blur", "sharp"))):
        (target / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / kind / file, target / kind / file)


def main() -> int:
    if not SHARED.is_dir():
        print(f"error: {SHARED} not found", file=sys.stderr)
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    for path in sorted((SHARED / "gopro" / "blur").glob("*.png")):
        copy_pair(SHARED / "gopro", path.name, OUT / "val")
    copy_pair(SHARED / "gopro_more", "Flower_blur.png", OUT / "val")
    real = SHARED / "train" / "gopro_240fps_pairs"
    for path in sorted((real / "blur").glob("*.png")):
        copy_pair(real, path.name, OUT / "train" / "gopro")
    copy_pair(SHARED / "gopro_more", "Istanbul_blur.png", OUT / "train" / "gopro")
    reds = SHARED / "train" / "reds027_x4"
    for path in sorted((reds / "blur").glob("*.png"))[::2]:
        copy_pair(reds, path.name, OUT / "train" / "reds")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    (OUT / "train" / "photos").mkdir()
    for path in sorted((SHARED / "train" / "sharp_photos" / "kodak24").iterdir()):
        if size + path.stat().st_size > LIMIT:
            break
        shutil.copy2(path, OUT / "train" / "photos" / path.name)
        size += path.stat().st_size
    print(f"{OUT}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
