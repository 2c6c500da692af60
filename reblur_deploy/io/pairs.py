"""Image pairing for evaluation and training: images under a folder by relative path, and each
blurry image matched with its sharp ground truth.

Files are matched by their path relative to each folder: the same path under the ground-truth
folder, else the path with every ``blur`` replaced by ``sharp`` (``blur_00.png`` ↔
``sharp_00.png``, ``461_blur.png`` ↔ ``461_sharp.png``). A file without a partner, on either
side, is an error naming it. ``paired:DIR`` specifications take ``DIR/blur`` and ``DIR/sharp``
(or, GOPRO_Large style, ``DIR/<sequence>/blur`` and ``DIR/<sequence>/sharp``); ``images:DIR``
takes every image under ``DIR``, without ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InputError
from .images import IMAGE_SUFFIXES, is_image


@dataclass(frozen=True)
class Pair:
    """One image to measure (``source``) and its ground truth (None without one)."""

    name: str
    source: Path
    gt: Path | None = None


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Images under ``folder`` (recursively, hidden files skipped) by relative POSIX path."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and is_image(path):
            found[rel.as_posix()] = path
    return found


def partner_name(name: str, gt_names: Iterable[str]) -> str | None:
    """The ground-truth name of ``name``: itself, else with every 'blur' replaced by 'sharp'."""
    names = set(gt_names)
    for candidate in (name, name.replace("blur", "sharp")):
        if candidate in names:
            return candidate
    return None


def match_pairs(pred: str | os.PathLike, gt: str | os.PathLike) -> list[Pair]:
    """Pair every image under ``pred`` with its partner under ``gt`` (rule: ``partner_name``)."""
    preds, gts = list_images(pred), list_images(gt)
    if not preds:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {pred}")
    pairs, used = [], set()
    for name, path in preds.items():
        partner = partner_name(name, gts)
        if partner is None:
            tried = " or ".join(dict.fromkeys([name, name.replace("blur", "sharp")]))
            raise InputError(f"{path} has no ground truth: no {tried} under {gt}")
        used.add(partner)
        pairs.append(Pair(name, path, gts[partner]))
    unmatched = [gts[n] for n in gts if n not in used]
    if unmatched:
        more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
        raise InputError(f"ground truth {unmatched[0]}{more} has no image under {pred} to match")
    return pairs


def paired_data(root: str | os.PathLike) -> list[Pair]:
    """``root/blur`` + ``root/sharp``, or ``root/<seq>/blur`` + ``root/<seq>/sharp`` for each
    sequence (names then start with ``<seq>/``)."""
    root = Path(root)
    if (root / "blur").is_dir() and (root / "sharp").is_dir():
        return match_pairs(root / "blur", root / "sharp")
    pairs = []
    for blur in sorted(root.glob("*/blur")):
        if (blur.parent / "sharp").is_dir():
            seq = blur.parent.name
            for p in match_pairs(blur, blur.parent / "sharp"):
                pairs.append(Pair(f"{seq}/{p.name}", p.source, p.gt))
    if not pairs:
        raise InputError(
            f"paired data needs {root}/blur and {root}/sharp, or {root}/<sequence>/blur and "
            f"{root}/<sequence>/sharp (GOPRO_Large layout)"
        )
    return pairs


def image_data(root: str | os.PathLike) -> list[Pair]:
    """Every image under ``root``, without ground truth."""
    images = list_images(root)
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return [Pair(name, path) for name, path in images.items()]


def parse_data(spec: str) -> list[Pair]:
    """``paired:DIR`` or ``images:DIR`` → pairs."""
    kind, sep, folder = spec.partition(":")
    if not sep or kind not in ("paired", "images") or not folder:
        raise ConfigError(f"--data must be paired:DIR or images:DIR, got {spec!r}")
    return paired_data(folder) if kind == "paired" else image_data(folder)
