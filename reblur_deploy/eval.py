"""Evaluation as the paper reports it: LPIPS, NIQE, PSNR, SSIM, blur score and time per image.

Two ways in, both callable from Python (``reblur-eval`` only parses options and prints):

* ``evaluate_folders(pred, gt)``: metrics of images that already exist, paired with their
  ground truth by ``reblur_deploy.io.pairs`` (same relative path, else ``blur`` → ``sharp``).
  Without ``gt`` only the no-reference columns (NIQE, blur score) are measured.
* ``evaluate_model(weights, "paired:DIR" | "images:DIR", tta_sweep=(0, 5, 10))``: runs the
  deblurring module with each number of test-time adaptation steps and measures its outputs:
  one row per setting, like the paper's Table 2 / Table G. ``paired:DIR`` takes ``DIR/blur`` and
  ``DIR/sharp`` (or, GOPRO_Large style, ``DIR/<sequence>/blur`` and ``DIR/<sequence>/sharp``);
  ``images:DIR`` takes every image under ``DIR`` and has no ground truth.

Both return a ``Report`` (``.markdown()``, ``.csv()``, ``.json()``, ``.write(path)``), and
``plot_report`` draws PSNR against NIQE and LPIPS across the TTA steps (Figures B and C).
A column that cannot be measured says "n/a" and the report's ``notes`` say why in one line each.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ._version import __version__
from .atomic import write_bytes_atomic
from .errors import ConfigError, DependencyError, InputError, ReblurError
from .io import read_image
from .io.pairs import Pair, image_data, match_pairs, parse_data
from .losses import blur_score
from .metrics import niqe, psnr, ssim
from .metrics.lpips import backbone_hint, find_backbone, load_lpips, to_tensor
from .pipeline import Deblurrer
from .tables import markdown_table
from .tta import TTAConfig
from .weights import resolve as resolve_weights

# column key → (header, format); the order is the table's
COLUMNS: dict[str, tuple[str, str]] = {
    "lpips": ("LPIPS↓", "{:.4f}"),
    "niqe": ("NIQE↓", "{:.3f}"),
    "psnr": ("PSNR↑", "{:.2f}"),
    "ssim": ("SSIM↑", "{:.4f}"),
    "blur_score": ("blur score↓", "{:.3e}"),  # scores span decades: 2e-06 to 1e-02
    "flicker": ("flicker↓", "{:+.5f}"),  # --sequence only, see flicker()
    "seconds": ("s/img", "{:.3f}"),
}


def flicker(out: np.ndarray, previous: np.ndarray, ref: np.ndarray, ref_prev: np.ndarray) -> float:
    """Temporal instability of consecutive outputs, flow-free: the mean absolute change between
    them minus that of the reference frames (the sharp ones, else the inputs), in [0, 1] units.
    Motion in the scene changes both alike; what a method adds frame to frame (weights that
    drift, adaptation that differs per frame) shows as a positive value."""
    change = np.abs(out.astype(np.float32) - previous).mean()
    return float(change - np.abs(ref.astype(np.float32) - ref_prev).mean()) / _peak(out)


def _peak(image: np.ndarray) -> float:
    return 65535.0 if image.dtype == np.uint16 else 255.0


# ------------------------------------------------------------------------------ report


def _cell(column: str, value: float | None) -> str:
    return "n/a" if value is None else COLUMNS[column][1].format(value)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


@dataclass
class Row:
    """One setting (a folder of images, or a number of TTA steps) and its per-image values."""

    setting: str
    tta_steps: int | None
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, column: str) -> float | None:
        return _mean([image.get(column) for image in self.per_image])


@dataclass
class Report:
    """A table of rows × metric columns, with notes explaining every "n/a"."""

    rows: list[Row]
    columns: list[str]
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One dict per row: setting, tta_steps, images and the mean of each column."""
        return [
            {
                "setting": row.setting,
                "tta_steps": row.tta_steps,
                "images": len(row.per_image),
                **{c: row.mean(c) for c in self.columns},
            }
            for row in self.rows
        ]

    def markdown(self) -> str:
        headers = ["setting", "images"] + [COLUMNS[c][0] for c in self.columns]
        rows = [
            [entry["setting"], str(entry["images"]), *(_cell(c, entry[c]) for c in self.columns)]
            for entry in self.table()
        ]
        numeric = [False] + [True] * (len(headers) - 1)
        return "\n".join(markdown_table(headers, rows, numeric)) + "\n"

    def per_image_markdown(self) -> str:
        """One line per image and setting, for checking single values."""
        headers = ["setting", "image"] + [COLUMNS[c][0] for c in self.columns]
        rows = [
            [row.setting, image["image"], *(_cell(c, image.get(c)) for c in self.columns)]
            for row in self.rows
            for image in row.per_image
        ]
        numeric = [False, False] + [True] * len(self.columns)
        return "\n".join(markdown_table(headers, rows, numeric)) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["setting", "tta_steps", "images", *self.columns])
        for entry in self.table():
            writer.writerow(
                [
                    entry["setting"],
                    "" if entry["tta_steps"] is None else entry["tta_steps"],
                    entry["images"],
                    *("" if entry[c] is None else repr(entry[c]) for c in self.columns),
                ]
            )
        return out.getvalue()

    def json(self) -> str:
        rows = []
        for row, entry in zip(self.rows, self.table(), strict=True):
            rows.append(
                {
                    "setting": row.setting,
                    "tta_steps": row.tta_steps,
                    "images": entry["images"],
                    "mean": {c: _json_number(entry[c]) for c in self.columns},
                    "per_image": [
                        {k: _json_number(v) if isinstance(v, float) else v for k, v in i.items()}
                        for i in row.per_image
                    ],
                }
            )
        document = {
            "columns": self.columns,
            "rows": rows,
            "notes": self.notes,
            "config": self.config,
        }
        return json.dumps(document, indent=1, ensure_ascii=False) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as .csv, .json or .md (by suffix), replacing the file atomically."""
        path = check_report_path(path)
        formats = {".csv": self.csv, ".json": self.json, ".md": self.markdown}
        return write_bytes_atomic(path, formats[path.suffix.lower()]().encode())


def check_report_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json", ".md"):
        raise ConfigError(f"{path}: write a report as .csv, .json or .md")
    return path


# ----------------------------------------------------------------------------- metrics


def measure(image: np.ndarray | Path, gt: np.ndarray | Path | None) -> dict[str, Any]:
    """PSNR, SSIM (with ground truth) and NIQE of one image; what runs in worker processes.

    Arrays or paths (read here, so that a worker decodes its own files). A NIQE that is
    undefined (tiny or flat image) is None, with the reason under ``"niqe_error"``.
    """
    if isinstance(image, Path):
        image = read_image(image)
    if isinstance(gt, Path):
        gt = read_image(gt)
    values: dict[str, Any] = {}
    if gt is not None:
        values["psnr"] = psnr(image, gt)
        values["ssim"] = ssim(image, gt)
    try:
        values["niqe"] = niqe(image)
    except InputError as e:
        values["niqe"], values["niqe_error"] = None, str(e)
    return values


def default_jobs() -> int:
    """Worker processes for the CPU metrics: none on ≤ 2 cores (measured: no gain there)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(cores - 1, 8)


class _Collector:
    """Runs ``measure`` inline (jobs=1) or in worker processes, fills rows, drives the bar."""

    def __init__(self, jobs: int | None, total: int, progress: bool):
        jobs = default_jobs() if jobs is None else jobs
        if jobs < 1:
            raise ConfigError(f"jobs must be ≥ 1, got {jobs}")
        self.pool = None
        if jobs > 1:
            # spawn, not fork: the parent runs torch threads, which a fork copies half-alive
            context = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(jobs, mp_context=context)
        # disable=None shows the bar on a terminal only, so logs and pipes stay clean
        self.bar = tqdm(
            total=total, unit="img", desc="reblur-eval", disable=None if progress else True
        )
        self.pending: list[tuple[dict[str, Any], Future]] = []

    @property
    def inline(self) -> bool:
        return self.pool is None

    def submit(self, entry: dict[str, Any], image, gt) -> None:
        """Measure ``image`` (against ``gt``) into ``entry`` (now or when a worker is done)."""
        if self.pool is None:
            future: Future = Future()
            try:
                future.set_result(measure(image, gt))
            except ReblurError as e:
                future.set_exception(e)
        else:
            future = self.pool.submit(measure, image, gt)
        future.add_done_callback(lambda _: self.bar.update())
        self.pending.append((entry, future))

    def finish(self) -> None:
        for entry, future in self.pending:
            try:
                entry.update(future.result())
            except ReblurError as e:
                raise type(e)(f"{entry['image']}: {e}") from None
        self.bar.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        self.bar.close()

    def __enter__(self) -> _Collector:
        return self

    def __exit__(self, error_type, *_) -> None:
        """Collect every result when the block ran through; shut the workers down either way."""
        try:
            if error_type is None:
                self.finish()
        finally:
            self.close()


class _Lpips:
    """LPIPS on the device, or None everywhere (with a note) when no backbone is found."""

    def __init__(self, enabled: bool, backbone, device: torch.device, notes: list[str]):
        self.model = self.path = None
        self.device = device
        if not enabled:
            notes.append("LPIPS: n/a (switched off)")
            return
        self.path = find_backbone(backbone)  # an explicit path that does not exist raises
        if self.path is None:
            notes.append(f"LPIPS: n/a ({backbone_hint()})")
            return
        self.model = load_lpips(self.path, str(device))

    @property
    def backbone(self) -> str | None:
        """The backbone file used (for the report), None when LPIPS did not run."""
        return str(self.path) if self.model is not None else None

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, gt: np.ndarray) -> float | None:
        if self.model is None:
            return None
        a, b = to_tensor(image, self.device), to_tensor(gt, self.device)
        if a.shape != b.shape:
            raise InputError(f"shapes differ: {image.shape} vs ground truth {gt.shape}")
        return float(self.model(a, b)[0])


class _BlurScore:
    """``reblur_deploy.blur_score`` of image arrays under the weights' MR, or None (+ note)."""

    def __init__(self, reblur, notes: list[str], weights_given: bool):
        self.mr = reblur
        if reblur is None:
            why = "the weights hold no reblurring module MR" if weights_given else "pass --weights"
            notes.append(f"blur score: n/a (it needs a reblurring module: {why})")

    def __call__(self, image: np.ndarray) -> float | None:
        return None if self.mr is None else blur_score(image, self.mr)


def _report(rows: list[Row], columns: list[str], notes: list[str], config: dict,
            measure_lpips: _Lpips | None) -> Report:  # fmt: skip
    undefined = []
    for row in rows:
        for image in row.per_image:
            if "niqe_error" in image:
                undefined.append(f"{row.setting}/{image['image']}: {image.pop('niqe_error')}")
            for column in columns:
                image.setdefault(column, None)
    if undefined:
        notes.append(f"NIQE: left out of the mean for {len(undefined)} image(s): {undefined[0]}")
    backbone = measure_lpips.backbone if measure_lpips is not None else None
    config = {**config, "lpips_backbone": backbone, "package_version": __version__}
    return Report(rows, columns, notes, config)


def _columns(with_gt: bool, timed: bool, sequence: bool = False) -> list[str]:
    names = list(COLUMNS) if with_gt else ["niqe", "blur_score", "flicker", "seconds"]
    names = names if sequence else [c for c in names if c != "flicker"]
    return names if timed else [c for c in names if c != "seconds"]


def _nonempty(pairs: list[Pair]) -> list[Pair]:
    if not pairs:
        raise InputError("no images to evaluate")
    return pairs


def _named(name: str, fn, *args):
    """Call ``fn``; an InputError says which image it was about."""
    try:
        return fn(*args)
    except InputError as e:
        raise InputError(f"{name}: {e}") from None


# -------------------------------------------------------------------------- evaluation


def evaluate_folders(
    pred: str | os.PathLike | None = None,
    gt: str | os.PathLike | None = None,
    *,
    pairs: list[Pair] | None = None,
    weights=None,
    device: str = "auto",
    lpips: bool = True,
    lpips_backbone: str | os.PathLike | None = None,
    jobs: int | None = None,
    progress: bool = True,
    setting: str | None = None,
) -> Report:
    """Metrics of existing images: ``pred`` against ``gt`` (matching rule in the module
    docstring), ``pred`` alone (NIQE and blur score), or ready-made ``pairs``.

    ``weights`` (optional) supplies the reblurring module MR for the blur score.
    """
    if pairs is None:
        if pred is None:
            raise ConfigError("give a folder of images to evaluate (pred)")
        pairs = match_pairs(pred, gt) if gt is not None else image_data(pred)
    pairs = _nonempty(pairs)
    with_gt = all(p.gt is not None for p in pairs)
    notes: list[str] = []
    dev, reblur = torch.device("cpu"), None
    if weights is not None:
        model = Deblurrer(weights, device=device, backend="torch")  # for its MR only
        dev, reblur = model.device, model.reblur
    score = _BlurScore(reblur, notes, weights_given=weights is not None)
    measure_lpips = _Lpips(lpips, lpips_backbone, dev, notes) if with_gt else None
    row = Row(setting or (Path(pred).name if pred is not None else "images"), None)
    with _Collector(jobs, len(pairs), progress) as collector:
        _measure_files(pairs, row, score, measure_lpips, collector)
    config = {
        "mode": "folders",
        "pred": str(pred) if pred is not None else None,
        "gt": str(gt) if gt is not None else None,
        "weights": str(weights) if isinstance(weights, (str, os.PathLike)) else None,
    }
    return _report([row], _columns(with_gt, timed=False), notes, config, measure_lpips)


def _measure_files(pairs, row: Row, score, measure_lpips, collector: _Collector) -> None:
    """Each pair's image (against its ground truth) into ``row``: the blur score and LPIPS
    here, the CPU metrics through the collector."""
    needs_pixels = collector.inline or score.mr is not None or getattr(measure_lpips, "model", None)
    for pair in pairs:
        entry: dict[str, Any] = {"image": pair.name}
        row.per_image.append(entry)
        if not needs_pixels:  # the workers read the files themselves
            collector.submit(entry, pair.source, pair.gt)
            continue
        image = read_image(pair.source)
        gt_image = read_image(pair.gt) if pair.gt is not None else None
        entry["blur_score"] = score(image)
        if measure_lpips is not None:
            entry["lpips"] = _named(pair.name, measure_lpips, image, gt_image)
        if collector.inline:
            collector.submit(entry, image, gt_image)
        else:
            collector.submit(entry, pair.source, pair.gt)


def _sha256(weights: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(resolve_weights(weights), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tile_options(tile: int | None, overlap: int | None) -> dict[str, int]:
    if tile is None:
        if overlap is not None:
            raise ConfigError("a tile overlap needs a tile size (--tile)")
        return {}
    return {"tile": tile} if overlap is None else {"tile": tile, "tile_overlap": overlap}


def parse_tta_sweep(spec: str | Sequence[int]) -> list[int]:
    """``"0,1,5,10"`` → [0, 1, 5, 10] (each ≥ 0, no repeats)."""
    if isinstance(spec, str):
        try:
            steps = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError:
            raise ConfigError(
                f"--tta-sweep takes comma-separated step counts, got {spec!r}"
            ) from None
    else:
        steps = [int(s) for s in spec]
    if not steps or any(s < 0 for s in steps) or len(set(steps)) != len(steps):
        raise ConfigError(f"TTA steps must be distinct numbers ≥ 0, got {spec!r}")
    return steps


def _run_rows(pairs, settings, score, measure_lpips, collector, sequence: bool) -> None:
    """Each pair through each (row, Deblurrer) of ``settings``, pairs in order; every entry
    goes to its row and to the collector (which measures the rest in worker processes)."""
    previous: dict[str, Any] = {}  # the last frame's reference and each row's output
    for pair in pairs:
        blurry = read_image(pair.source)
        gt_image = read_image(pair.gt) if pair.gt is not None else None
        ref = gt_image if gt_image is not None else blurry
        for row, runner in settings:
            start = time.perf_counter()
            output = _named(pair.name, runner, blurry)
            if runner.device.type == "cuda":
                torch.cuda.synchronize(runner.device)
            entry = {"image": pair.name, "seconds": time.perf_counter() - start}
            entry["blur_score"] = score(output)
            if sequence and row.setting in previous:
                entry["flicker"] = flicker(output, previous[row.setting], ref, previous["ref"])
            previous[row.setting] = output
            if measure_lpips is not None:
                entry["lpips"] = _named(pair.name, measure_lpips, output, gt_image)
            row.per_image.append(entry)
            collector.submit(entry, output, gt_image)
        previous["ref"] = ref


def evaluate_model(
    weights: str | os.PathLike,
    data: str | list[Pair],
    *,
    tta_sweep: str | Sequence[int] = (0,),
    tta_config: TTAConfig | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    tile: int | None = None,
    tile_overlap: int | None = None,
    lpips: bool = True,
    lpips_backbone: str | os.PathLike | None = None,
    jobs: int | None = None,
    progress: bool = True,
    sequence: bool = False,
    tta: str | Sequence[int] | None = None,
) -> Report:
    """Run the model with each number of TTA steps of ``tta_sweep`` on ``data`` and measure
    its outputs.

    One row per TTA setting (like the paper's Table G): LPIPS, NIQE, PSNR and SSIM against the
    ground truth when there is one, the blur score of the output under the weights' MR, and
    seconds per image (the Deblurrer call, TTA included, after one warm-up run). ``tta_config``
    gives the other TTA options of every row (its ``steps`` are replaced by each of
    ``tta_sweep``).
    ``tile`` and ``tile_overlap`` go to the Deblurrer (tiled inference, and TTA on tiles of
    that size). ``sequence``: the images are the frames of one video in name order (each row's
    Deblurrer sees them in that order, so TTA carry-over works as on a video) and a ``flicker``
    column measures temporal stability (see ``flicker``). ``tta``: the old name of
    ``tta_sweep``, deprecated (``tta`` is a TTAConfig everywhere else).
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError("evaluate_model takes a weight file path or a bundled model name")
    if tta is not None:
        warnings.warn("evaluate_model(tta=...) is deprecated; use tta_sweep=...",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
    steps = parse_tta_sweep(tta_sweep if tta is None else tta)
    pairs = _nonempty(parse_data(data) if isinstance(data, str) else list(data))
    with_gt = all(p.gt is not None for p in pairs)
    # Every row in eager PyTorch: TTA needs it, and the rows then differ by TTA alone.
    options = {"device": device, "dtype": dtype, "backend": "torch",
               **_tile_options(tile, tile_overlap)}  # fmt: skip
    runners = _runners(weights, steps, tta_config or TTAConfig(), options)
    first = runners[0]
    notes: list[str] = []
    score = _BlurScore(first.reblur, notes, weights_given=True)
    measure_lpips = _Lpips(lpips, lpips_backbone, first.device, notes) if with_gt else None
    rows = [Row(f"TTA {n}", n) for n in steps]
    with _Collector(jobs, len(pairs) * len(runners), progress) as collector:
        warm = Deblurrer({"deblur": first.deblur, "reblur": first.reblur}, **options)
        warm(read_image(pairs[0].source))  # first-call costs stay out of the timings
        _run_rows(pairs, list(zip(rows, runners, strict=True)), score, measure_lpips, collector,
                  sequence)  # fmt: skip
    config = {
        "mode": "model", "weights": str(weights), "weights_sha256": _sha256(weights),
        "data": data if isinstance(data, str) else None, "tta_sweep": steps,
        "device": str(first.device), "dtype": dtype, "tile": tile, "tile_overlap": tile_overlap,
        "sequence": sequence,
    }  # fmt: skip
    columns = _columns(with_gt, timed=True, sequence=sequence)
    return _report(rows, columns, notes, config, measure_lpips)


def _runners(weights, steps: list[int], base: TTAConfig, options: dict) -> list[Deblurrer]:
    """One Deblurrer per number of TTA steps, each with its own copy of the networks, all
    built before any work so that an unusable setting fails at once."""
    return [
        Deblurrer(weights, tta=dataclasses.replace(base, steps=n) if n else None, **options)
        for n in steps
    ]


# -------------------------------------------------------------------------------- plot


def check_plot_available() -> None:
    """DependencyError with the install line when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError(
            "--plot needs matplotlib: pip install 'reblur-deploy[plot]' (or matplotlib>=3.7)"
        ) from None


def plot_report(report: Report, path: str | os.PathLike) -> Path:
    """PSNR against NIQE (and LPIPS when measured) across the rows, like the paper's
    Figures B and C: each point is a setting, labelled with its TTA steps, joined in order.

    Needs matplotlib (``pip install 'reblur-deploy[plot]'``) and ground truth (PSNR).
    """
    check_plot_available()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    table = report.table()
    if "psnr" not in report.columns or any(e["psnr"] is None for e in table):
        raise ConfigError("a perception–distortion plot needs ground truth (PSNR): use paired data")
    panels = [c for c in ("niqe", "lpips") if all(e.get(c) is not None for e in table)]
    if not panels:
        raise ConfigError("nothing to plot against PSNR: NIQE and LPIPS are both n/a")
    path = Path(path)
    figure = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    for k, column in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        xs = [e[column] for e in table]
        ys = [e["psnr"] for e in table]
        ax.plot(xs, ys, "-o", color="tab:blue")
        for e, x, y in zip(table, xs, ys, strict=True):
            label = str(e["tta_steps"]) if e["tta_steps"] is not None else e["setting"]
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"{COLUMNS[column][0]} (perception)")
        ax.set_ylabel("PSNR↑ (dB)")
        ax.ticklabel_format(useOffset=False, style="plain")  # plain dB, no "+1.95e1"
        # Few, slanted ticks: rows that differ in the 4th decimal otherwise get labels long
        # enough to run into each other.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3)
        ax.set_title(f"PSNR vs {column.upper()}" + (" (labels: TTA steps)" if k == 0 else ""))
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
    return write_bytes_atomic(path, buffer.getvalue())
