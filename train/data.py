"""Training data: sources (GOPRO, REDS, paired folders, synthetic blur), checks, cache, sampling.

Sources are given as ``KIND:PATH`` (``--data``, repeatable), optionally with a share ``@W``:

* ``gopro:ROOT``  GOPRO_Large: ``ROOT/train/<sequence>/{blur,blur_gamma,sharp}/*.png`` (the
  ``test`` split for ``--val``); ROOT may also be a split folder itself. ``--gopro-blur``
  chooses ``blur`` or ``blur_gamma``.
* ``reds:ROOT``   REDS: ``ROOT/train/train_{blur,sharp}/<seq>/*.png`` or the flat
  ``ROOT/train_{blur,sharp}/<seq>/*.png`` (``val`` instead of ``train`` for ``--val``).
* ``paired:ROOT`` ``ROOT/blur`` + ``ROOT/sharp`` (or ``ROOT/<seq>/blur`` + ``ROOT/<seq>/sharp``),
  paired by name exactly as ``reblur-eval`` pairs them (``reblur_deploy.io.pairs.paired_data``:
  the same name, else ``blur`` → ``sharp`` in the name).
* ``synthetic:DIR`` every image under DIR is a sharp image; the blurry one is synthesised for
  every sample (``train/synthetic.py``). ``synthetic:skimage`` uses the photos bundled with
  scikit-image (no download).
* ``frames:DIR``  consecutive frames of a high-frame-rate video (240 fps, as GOPRO's), in name
  order: DIR's images, or each subfolder's as one video. Every frame is a sharp image whose
  blurry partner is made for every sample from the real frames around it, GOPRO's recipe: the
  mean in linear light of k consecutive frames (k odd, from ``--syn-frames``) centred on it.

Shares: without any ``@W`` the sources are concatenated (each item once per epoch). With
shares, an epoch keeps the total length Σ Nᵢ but draws round(Σ N · Wᵢ / Σ W) items from source i
(a source without ``@W`` has W = 1), cycling through a fresh permutation of each source.

Everything a sample is made of (crop, flips, synthetic trajectory) comes from a generator
seeded with (seed, epoch, position in the epoch), so the data stream is a pure function of the
seed and the iteration: resuming needs nothing but the iteration, and the number of loader
workers never changes it.
"""

from __future__ import annotations

import contextlib
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from reblur_deploy.errors import ConfigError, InputError, ReblurError
from reblur_deploy.io import IMAGE_SUFFIXES, read_image
from reblur_deploy.io.pairs import list_images, match_pairs, paired_data

from .synthetic import (
    BlurParams,
    blur_pair,
    reblur_pair,
    synthesize,
    synthesize_reblur,
    to_float,
    to_linear,
)

KINDS = ("gopro", "reds", "paired", "synthetic", "frames")
MADE = ("synthetic", "frames")  # kinds whose blurry images are made for each sample
SKIMAGE_PREFIX = "skimage:"
# Photographs bundled with scikit-image (file names in skimage.data.data_dir); all at least
# 300 px on their short side. Gray ones are used as three equal channels.
SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "rocket": "rocket.jpg",
}


# ------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Item:
    """One training example: a blurry/sharp pair, or a sharp image to blur (``blur`` None).

    ``blur`` and ``sharp`` are file paths, or ``skimage:NAME`` for a scikit-image photo. A
    frame of a ``frames:`` source has its video's frames in order in ``sequence``: its blur is
    made from its neighbours there.
    """

    name: str
    sharp: str
    blur: str | None = None
    sequence: tuple[str, ...] = ()

    @property
    def refs(self) -> tuple[str, ...]:
        return (self.sharp,) if self.blur is None else (self.blur, self.sharp)

    def aliases(self) -> set[str]:
        """Names that select this item in ``--val names:...``: the item's name, its files'
        names, their stems, and the stems without blur/sharp (``461_blur.png`` → ``461``)."""
        found = {self.name} | {Path(ref).name for ref in self.refs}
        for name in list(found):
            stem = str(PurePosixPath(name).with_suffix("")) if PurePosixPath(name).suffix else name
            found.add(stem)
            core = PurePosixPath(stem).name.replace("blur", "").replace("sharp", "").strip("_-. ")
            if core:
                found.add(core)
        return found


@dataclass
class Source:
    kind: str
    root: str
    items: list[Item]
    share: float | None = None

    @property
    def spec(self) -> str:
        share = "" if self.share is None else f"@{self.share:g}"
        return f"{self.kind}:{self.root}{share}"


def parse_spec(spec: str) -> tuple[str, str, float | None]:
    """``KIND:PATH[@SHARE]`` → (kind, path, share)."""
    kind, sep, rest = str(spec).partition(":")
    if not sep or kind not in KINDS or not rest:
        raise ConfigError(
            f"a data source is KIND:PATH with KIND one of {', '.join(KINDS)}, got {spec!r}"
        )
    share = None
    head, at, tail = rest.rpartition("@")
    if at:
        try:
            share = float(tail)
        except ValueError:
            share = None
        else:
            rest = head
            if not share > 0 or not math.isfinite(share):
                raise ConfigError(f"{spec!r}: the share after @ must be a positive number")
    return kind, rest, share


def _split_dir(root: Path, split: str, marker: str) -> Path:
    """ROOT/split when it exists, else ROOT itself when it looks like a split folder."""
    if (root / split).is_dir():
        return root / split
    if any(root.glob(marker)):
        return root
    raise InputError(f"{root} has no {split}/ folder (nor {marker} inside it)")


def gopro_items(root: str | os.PathLike, split: str = "train", blur: str = "blur") -> list[Item]:
    """GOPRO_Large: ``root/<split>/<sequence>/{blur|blur_gamma,sharp}``, paired by file name."""
    if blur not in ("blur", "blur_gamma"):
        raise ConfigError(f"--gopro-blur must be blur or blur_gamma, got {blur!r}")
    base = _split_dir(Path(root), split, "*/sharp")
    items = []
    sequences = sorted(p.parent for p in base.glob("*/sharp") if p.is_dir())
    if not sequences:
        raise InputError(f"{base} holds no <sequence>/sharp folders (GOPRO_Large layout)")
    for seq in sequences:
        if not (seq / blur).is_dir():
            raise InputError(f"{seq} has sharp/ but no {blur}/ folder")
        for pair in match_pairs(seq / blur, seq / "sharp"):
            items.append(Item(f"{seq.name}/{pair.name}", str(pair.gt), str(pair.source)))
    return items


def reds_items(root: str | os.PathLike, split: str = "train") -> list[Item]:
    """REDS: ``root/<split>/<split>_{blur,sharp}/<seq>/*.png`` or ``root/<split>_{blur,sharp}``."""
    root = Path(root)
    for base in (root / split, root):
        blur, sharp = base / f"{split}_blur", base / f"{split}_sharp"
        if blur.is_dir() and sharp.is_dir():
            return [Item(p.name, str(p.gt), str(p.source)) for p in match_pairs(blur, sharp)]
    raise InputError(
        f"REDS data needs {root}/{split}/{split}_blur and {split}_sharp, or "
        f"{root}/{split}_blur and {root}/{split}_sharp"
    )


def paired_items(root: str | os.PathLike) -> list[Item]:
    return [Item(p.name, str(p.gt), str(p.source)) for p in paired_data(root)]


def skimage_items() -> list[Item]:
    return [Item(name, SKIMAGE_PREFIX + name) for name in SKIMAGE_PHOTOS]


def synthetic_items(root: str) -> list[Item]:
    if root == "skimage":
        return skimage_items()
    images = list_images(root)
    if not images:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return [Item(name, str(path)) for name, path in images.items()]


def frames_items(root: str) -> list[Item]:
    """One item per frame; the frames of a folder (DIR itself, or each folder below it that
    holds images) are one video, in name order."""
    videos: dict[str, list[tuple[str, Path]]] = {}
    for name, path in list_images(root).items():
        videos.setdefault(str(PurePosixPath(name).parent), []).append((name, path))
    items = []
    for folder, frames in videos.items():
        if len(frames) < 3:
            raise InputError(f"{Path(root) / folder}: a frames: video needs at least 3 frames")
        sequence = tuple(str(path) for _, path in frames)
        items += [Item(name, str(path), sequence=sequence) for name, path in frames]
    return items


def load_source(spec: str, split: str = "train", gopro_blur: str = "blur") -> Source:
    """List a source's items (``split`` is train for --data, the held-out split for --val)."""
    kind, root, share = parse_spec(spec)
    if kind == "gopro":
        items = gopro_items(root, "train" if split == "train" else "test", gopro_blur)
    elif kind == "reds":
        items = reds_items(root, "train" if split == "train" else "val")
    elif kind == "paired":
        items = paired_items(root)
    elif kind == "frames":
        items = frames_items(root)
    else:
        items = synthetic_items(root)
    if not items:
        raise InputError(f"{spec}: no images found")
    return Source(kind, root, items, share)


@dataclass
class DataPlan:
    """The training sources (hold-outs removed) and the validation items."""

    train: list[Source]
    val: list[tuple[Item, bool]] = field(default_factory=list)  # (item, its blur is made)
    val_desc: list[str] = field(default_factory=list)

    @property
    def train_items(self) -> list[Item]:
        return [item for source in self.train for item in source.items]


def plan_data(
    data: Sequence[str], val: Sequence[str] = (), seed: int = 0, gopro_blur: str = "blur"
) -> DataPlan:
    """Resolve ``--data`` and ``--val`` into items.

    ``--val`` takes a held-out source (``paired:``/``gopro:``/``reds:``/``synthetic:``, with
    their held-out split), ``names:A,B,...`` (items of the training sources selected by name,
    e.g. ``names:blur_04,461``: the file name, its stem, or the stem without blur/sharp, or a
    GOPRO sequence), or a fraction ``0.1`` / ``fraction:0.1`` (that share of every training
    source, at least one item each, chosen by the seed).
    """
    if not data:
        raise ConfigError("no training data: pass --data KIND:PATH (e.g. paired:GOPRO/test)")
    sources = [load_source(spec, "train", gopro_blur) for spec in data]
    plan = DataPlan(sources)
    for spec in val:
        spec = str(spec)
        kind, _, rest = spec.partition(":")
        if kind == "names":
            tokens = [t.strip() for t in rest.split(",") if t.strip()]
            if not tokens:
                raise ConfigError(f"--val {spec!r}: list at least one name after names:")
            _hold_out(plan, _by_names(plan, tokens, spec))
            plan.val_desc.append(spec)
        elif kind in KINDS:
            source = load_source(spec, "val", gopro_blur)
            plan.val += [(item, source.kind in MADE) for item in source.items]
            plan.val_desc.append(spec)
        else:
            try:
                fraction = float(rest if kind == "fraction" else spec)
            except ValueError:
                raise ConfigError(
                    f"--val takes KIND:PATH, names:A,B,... or a fraction, got {spec!r}"
                ) from None
            if not 0 < fraction < 1:
                raise ConfigError(f"--val fraction must be in (0, 1), got {fraction}")
            chosen = []
            for i, source in enumerate(plan.train):
                n = len(source.items)
                k = max(1, round(fraction * n))
                if k >= n:
                    raise ConfigError(
                        f"--val {spec}: {source.spec} has only {n} item(s), none left to train on"
                    )
                order = np.random.default_rng([seed, 7919, i]).permutation(n)
                chosen += [(i, source.items[j]) for j in sorted(order[:k])]
            _hold_out(plan, chosen)
            plan.val_desc.append(f"fraction:{fraction:g}")
    for source in plan.train:
        if not source.items:
            raise ConfigError(f"--val holds out every item of {source.spec}; none left to train on")
    return plan


def _by_names(plan: DataPlan, tokens: list[str], spec: str) -> list[tuple[int, Item]]:
    chosen: dict[tuple[int, str], tuple[int, Item]] = {}
    for token in tokens:
        hits = [
            (i, item)
            for i, source in enumerate(plan.train)
            for item in source.items
            if token in item.aliases() or item.name.startswith(token.rstrip("/") + "/")
        ]
        if not hits:
            examples = ", ".join(item.name for item in plan.train_items[:5])
            raise ConfigError(
                f"--val {spec}: no training item is named {token!r} (items are named like "
                f"{examples}; a name, its stem or its stem without blur/sharp selects one)"
            )
        for i, item in hits:
            chosen[(i, item.name)] = (i, item)
    return list(chosen.values())


def _hold_out(plan: DataPlan, chosen: list[tuple[int, Item]]) -> None:
    for i, item in chosen:
        source = plan.train[i]
        if item in source.items:
            source.items.remove(item)
            plan.val.append((item, source.kind in MADE))


# --------------------------------------------------------------------- decoding, checks


def skimage_path(ref: str) -> Path:
    import skimage.data

    name = ref[len(SKIMAGE_PREFIX) :]
    if name not in SKIMAGE_PHOTOS:
        raise InputError(f"{ref}: not one of the scikit-image photos ({', '.join(SKIMAGE_PHOTOS)})")
    path = Path(skimage.data.data_dir) / SKIMAGE_PHOTOS[name]
    if not path.is_file():
        raise InputError(f"{ref}: {path} is missing from this scikit-image installation")
    return path


def _path(ref: str) -> Path:
    return skimage_path(ref) if ref.startswith(SKIMAGE_PREFIX) else Path(ref)


def decode(ref: str) -> np.ndarray:
    """An image as H×W×3 uint8/uint16 RGB (gray → three equal channels, alpha dropped)."""
    image = read_image(_path(ref))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        image = np.ascontiguousarray(image[..., :3])
    elif image.shape[2] != 3:
        raise InputError(f"{ref}: {image.shape[2]}-channel images are not supported")
    return image


def image_size(ref: str) -> tuple[int, int]:
    """(height, width) from the file header (Pillow, no decoding); a full decode if it cannot."""
    from PIL import Image, UnidentifiedImageError

    path = _path(ref)
    try:
        with Image.open(path) as im:
            width, height = im.size
        return height, width
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return decode(ref).shape[:2]  # raises a clear InputError when it is not an image


class ImageStore:
    """Decodes images, keeping them decoded in memory once ``preload`` has been called.

    The cache is filled in the main process before the loader workers start, so the workers
    (forked) share the decoded arrays instead of each decoding every image again.
    """

    def __init__(self):
        self.cache: dict[str, np.ndarray] = {}

    def load(self, ref: str) -> np.ndarray:
        image = self.cache.get(ref)
        return decode(ref) if image is None else image

    @property
    def cached_bytes(self) -> int:
        return sum(a.nbytes for a in self.cache.values())


def _check_item(
    item: Item, min_size: int, full: bool, store: ImageStore | None
) -> Exception | None:
    try:
        sizes = []
        for ref in item.refs:
            if full or store is not None:
                image = decode(ref)
                if store is not None:
                    store.cache[ref] = image
                sizes.append(image.shape[:2])
            else:
                sizes.append(image_size(ref))
        if item.blur is not None and sizes[0] != sizes[1]:
            (hb, wb), (hs, ws) = sizes
            return InputError(
                f"{item.blur} is {wb}×{hb} but its sharp partner {item.sharp} is {ws}×{hs}"
            )
        h, w = sizes[-1]
        if min(h, w) < min_size:
            return InputError(
                f"{item.sharp} is {w}×{h}, smaller than the {min_size}×{min_size} crop"
            )
    except ReblurError as e:
        return e
    return None


def check_items(
    items: Sequence[Item],
    min_size: int,
    full: bool = True,
    store: ImageStore | None = None,
    threads: int | None = None,
    progress=None,
) -> str | None:
    """Check every item (readable, blur and sharp of one size, at least ``min_size``).

    ``full`` decodes every image (finds truncated files too), else only headers are read;
    with ``store`` the decoded images are kept in its cache. Returns the first problem, in
    item order, as one line naming the file, or None.
    """
    threads = threads or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:  # decoding releases the GIL
        results = pool.map(lambda it: _check_item(it, min_size, full, store), items)
        first = None
        for result in results:
            if progress is not None:
                progress.update()
            if result is not None and first is None:
                first = str(result)
    return first


# ------------------------------------------------------------------------------ samples


@dataclass(frozen=True)
class Augment:
    """Random flips and 90° rotations (all 8 orientations), optional channel shuffle."""

    flip: bool = True
    rotate: bool = True
    channel_shuffle: bool = False

    def __call__(self, rng: np.random.Generator, *images: np.ndarray) -> list[np.ndarray]:
        k = int(rng.integers(4)) if self.rotate else 0
        flip = bool(rng.integers(2)) if self.flip else False
        order = rng.permutation(3) if self.channel_shuffle else None
        out = []
        for image in images:
            if k:
                image = np.rot90(image, k, axes=(0, 1))
            if flip:
                image = image[:, ::-1]
            if order is not None:
                image = image[..., order]
            out.append(np.ascontiguousarray(image))
        return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 float32 → 3×H×W tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class TrainSet(Dataset):
    """Random crops of the items; indexed by (index, epoch, position) keys from ``BatchStream``."""

    def __init__(
        self,
        items: Sequence[Item],
        crop: int,
        store: ImageStore | None = None,
        augment: Augment | None = None,
        blur: BlurParams | None = None,
        seed: int = 0,
        reblur: bool = False,
        sharp_share: float = 0.0,
        keep_mean: bool = False,
    ):
        self.items = list(items)
        self.crop = crop
        self.store = store or ImageStore()
        self.augment = augment or Augment()
        self.blur = blur or BlurParams()
        self.seed = seed
        self.reblur = reblur  # (T_α(S), T(S)) pairs from every sharp image, for --mode mr
        self.sharp_share = sharp_share  # (S, S) pairs: nothing to deblur
        self.keep_mean = keep_mean  # the blurry crop shifted to the sharp crop's mean

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        item = self.items[index]
        sharp = self.store.load(item.sharp)
        h, w = sharp.shape[:2]
        c = self.crop
        if min(h, w) < c:
            raise InputError(f"{item.sharp} is {w}×{h}, smaller than the {c}×{c} crop")
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        if self.reblur or item.blur is None:
            box = (top, left, c, c)
            return made_pair(item, sharp, self.store, rng, self.blur, box, self.reblur)
        blurry = self.store.load(item.blur)
        if blurry.shape != sharp.shape:
            raise InputError(
                f"{item.blur} is {blurry.shape[1]}×{blurry.shape[0]} but its sharp partner "
                f"{item.sharp} is {w}×{h}"
            )
        box = (slice(top, top + c), slice(left, left + c))
        return to_float(blurry[box]), to_float(sharp[box])

    def pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``sample``, then ``sharp_share`` and ``keep_mean`` (MD's pairs only). The random
        draw for ``sharp_share`` is made only when it is on, so that the stream of a run
        without it stays what it was."""
        blurry, sharp = self.sample(index, rng)
        if self.reblur:
            return blurry, sharp
        if self.sharp_share > 0 and rng.uniform() < self.sharp_share:
            return sharp, sharp
        if self.keep_mean:
            shift = sharp.mean(axis=(0, 1)) - blurry.mean(axis=(0, 1))
            blurry = np.clip(blurry + shift, 0.0, 1.0, dtype=np.float32)
        return blurry, sharp

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch, position = key
        rng = np.random.default_rng([self.seed, epoch, position])
        blurry, sharp = self.augment(rng, *self.pair(index, rng))
        return to_tensor(blurry), to_tensor(sharp)


def made_pair(
    item: Item,
    image: np.ndarray,
    store: ImageStore,
    rng: np.random.Generator,
    params: BlurParams,
    box: tuple[int, int, int, int],
    reblur: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The pair of one sample whose blur is made, not stored: from the item's real neighbouring
    frames (a ``frames:`` source) or from a synthetic camera shake of its sharp image
    (``image``, already loaded); with ``reblur``, MR's (T_α(S), T(S)) pair from the same
    exposure (``reblur_pair``)."""
    if not item.sequence:
        make = synthesize_reblur if reblur else synthesize
        return make(image, rng, params, box)
    frames, sharp = _real_exposure(item, image.shape, store, rng, params, box)
    return (reblur_pair if reblur else blur_pair)(frames, sharp, rng, params.noise, image.dtype)


def _real_exposure(
    item: Item,
    shape: tuple[int, ...],
    store: ImageStore,
    rng: np.random.Generator,
    params: BlurParams,
    box: tuple[int, int, int, int],
) -> tuple[list[np.ndarray], np.ndarray]:
    """k consecutive real frames (k odd in ``params.frames``, at most the video's length)
    cropped to ``box``, in linear light, centred on the item's frame (or as near it as the
    video's ends allow), and the sharp crop: the middle one. Every frame must have ``shape``,
    the item's own."""
    lo, hi = params.frames
    n = len(item.sequence)
    half = int(rng.integers(lo // 2, max(lo // 2, (hi - 1) // 2) + 1))  # k = 2·half + 1
    half = min(half, (n - 1) // 2)
    middle = min(max(item.sequence.index(item.sharp), half), n - 1 - half)
    top, left, h, w = box
    crops = []
    for ref in item.sequence[middle - half : middle + half + 1]:
        image = store.load(ref)
        if image.shape != shape:
            raise InputError(f"{ref} and {item.sharp}, frames of one video, differ in size")
        crops.append(to_float(image[top : top + h, left : left + w]))
    return [to_linear(crop) for crop in crops], crops[half]


class ValSet(Dataset):
    """Whole images (or their centre ``crop``); for items whose blur is made, one fixed blur."""

    def __init__(
        self,
        items: Sequence[tuple[Item, bool]],
        crop: int | None = None,
        store: ImageStore | None = None,
        blur: BlurParams | None = None,
        seed: int = 0,
    ):
        self.items = list(items)
        self.crop = crop
        self.store = store or ImageStore()
        self.blur = blur or BlurParams()
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def _box(self, h: int, w: int) -> tuple[int, int, int, int]:
        if self.crop is None:
            return 0, 0, h, w
        ch, cw = min(self.crop, h), min(self.crop, w)
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        item, made = self.items[index]
        sharp = self.store.load(item.sharp)
        box = self._box(*sharp.shape[:2])
        if made:
            rng = np.random.default_rng([self.seed, 104729, zlib.crc32(item.name.encode())])
            blurry, sharp_f = made_pair(item, sharp, self.store, rng, self.blur, box)
        else:
            blurry_u = self.store.load(item.blur)
            if blurry_u.shape != sharp.shape:
                raise InputError(f"{item.blur} and {item.sharp} differ in size")
            top, left, h, w = box
            blurry = to_float(blurry_u[top : top + h, left : left + w])
            sharp_f = to_float(sharp[top : top + h, left : left + w])
        return item.name, to_tensor(blurry), to_tensor(sharp_f)


# ----------------------------------------------------------------------------- sampling


def epoch_counts(sizes: Sequence[int], shares: Sequence[float | None]) -> list[int]:
    """Items per source in one epoch: the sizes, or Σ N split by the shares (largest remainder)."""
    if all(s is None for s in shares):
        return list(sizes)
    weights = np.array([1.0 if s is None else s for s in shares])
    exact = sum(sizes) * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: sum(sizes) - counts.sum()]:
        counts[i] += 1
    return [max(1, int(c)) for c in counts]


class MixSampler(DistributedSampler):
    """``DistributedSampler`` over the concatenated sources, with optional shares per source.

    Without shares it is exactly ``DistributedSampler`` (a permutation seeded by seed + epoch,
    padded to a multiple of the number of processes, rank r takes positions r, r + world, ...);
    with shares the epoch is drawn as ``epoch_counts`` says and then split the same way.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        shares: Sequence[float | None] | None = None,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.sizes = list(sizes)
        self.counts = epoch_counts(self.sizes, shares or [None] * len(self.sizes))
        super().__init__(
            range(sum(self.counts)), num_replicas=world, rank=rank, shuffle=True, seed=seed
        )

    @property
    def weighted(self) -> bool:
        return self.counts != self.sizes

    def __iter__(self) -> Iterator[int]:
        if not self.weighted:
            return super().__iter__()
        rng = np.random.default_rng([self.seed, self.epoch])
        pool = []
        offset = 0
        for size, count in zip(self.sizes, self.counts, strict=True):
            drawn = np.concatenate([rng.permutation(size) for _ in range(-(-count // size))])
            pool.append(offset + drawn[:count])
            offset += size
        order = rng.permutation(np.concatenate(pool)).tolist()
        order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


class BatchStream(Sampler):
    """An endless stream of batches of (index, epoch, position) keys, starting at ``start``.

    Epochs follow each other without a gap (a batch may span two), so batch k is the same
    whether the stream starts at 0 or at k: resuming at iteration k is ``start=k``.
    """

    def __init__(self, sampler: MixSampler, batch_size: int, start: int = 0):
        self.sampler = sampler
        self.batch_size = batch_size
        self.start = start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        per_epoch = len(self.sampler)
        epoch, k = divmod(self.start * self.batch_size, per_epoch)
        rank, world = self.sampler.rank, self.sampler.num_replicas
        batch: list[tuple[int, int, int]] = []
        while True:
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for j in range(k, per_epoch):
                batch.append((int(indices[j]), epoch, rank + j * world))
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch, k = epoch + 1, 0


def decoded_bytes(items: list[Item]) -> int:
    """Decoded size of the items' images, from the headers of at most 64 of them."""
    refs = sorted({ref for item in items for ref in item.refs})
    if not refs:
        return 0
    step = max(1, len(refs) // 64)
    sizes = []
    for ref in refs[::step]:
        with contextlib.suppress(ReblurError):  # a bad file is reported by the data check
            sizes.append(image_size(ref))
    if not sizes:
        return 0
    return int(sum(h * w for h, w in sizes) * 3 * len(refs) / len(sizes))
