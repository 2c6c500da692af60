"""Deblurrer: the one object a program needs to deblur images.

Everything between a user's pixels and a network lives here: dtype and colour conversion, the
[0, 1] float32 NCHW model boundary, padding to the network's ``size_divisor`` and cropping back,
batching, and clamping. Networks never see anything else.

Input conventions (returned in the same kind):

* ``H×W×3`` uint8 or uint16 RGB numpy arrays. 16-bit stays 16-bit (scaled by 1/65535 in and
  ×65535 out, so no precision is thrown away before the network).
* ``H×W`` or ``H×W×1`` grayscale: deblurred as three equal channels, returned as the mean of the
  three output channels, in the input's shape.
* ``H×W×4`` RGBA: RGB deblurred, alpha passed through unchanged.
* ``N×3×H×W`` float tensors in [0, 1] on any device: returned on that device with that dtype.
* a list of arrays: processed in batches of ``batch_size``, returned as a list.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .backends import create_backend
from .backends.exported import check_exported
from .device import native_bf16, resolve_device, resolve_dtype
from .errors import ConfigError, InputError, WeightsError
from .io.arrays import array_to_tensor, swap_red_blue, tensor_to_array
from .memory import TilePlanner
from .padding import pad_to_multiple
from .tiling import run_tiled, tiled_rows
from .tta import TestTimeAdapter, TTAConfig, TTAStats, recommended_lr
from .weights import ASSETS, LoadedWeights, load_weights

RANGE_TOLERANCE = 1e-3  # tensors this far outside [0, 1] are clamped; further out is an error


def default_weights(device: torch.device) -> str:
    """The bundled model a device gets when the user names none: the paper's U-Net on a GPU
    when this release ships it, else the CPU-sized model."""
    if device.type == "cuda" and (ASSETS / "unet-reblur.safetensors").is_file():
        return "unet-reblur"
    return "unet-lite"


def check_tensor(batch: torch.Tensor) -> torch.Tensor:
    """Validate an N×3×H×W float batch in [0, 1]; return it clamped to exactly [0, 1]."""
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise InputError(f"expected an N×3×H×W RGB tensor, got shape {tuple(batch.shape)}")
    if not batch.is_floating_point():
        raise InputError(f"expected a float tensor in [0, 1], got dtype {batch.dtype}")
    if batch.numel() == 0:
        raise InputError(f"empty tensor (shape {tuple(batch.shape)})")
    if not torch.isfinite(batch).all():
        raise InputError("the input tensor holds NaN or infinite values")
    lo, hi = batch.min().item(), batch.max().item()
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise InputError(
            f"tensor values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; "
            "divide 8-bit values by 255"
        )
    return batch.clamp(0.0, 1.0)


class Deblurrer:
    """Deblur images with a trained deblurring module, optionally with test-time adaptation.

    ``weights``: a weight file path, a bundled model name, what ``load_weights`` returned, a dict
    ``{"deblur": md, "reblur": mr}`` of modules (moved to ``device`` in place), or None for the
    bundled default of the device. ``device``: ``"auto"`` (CUDA when present), ``"cpu"``,
    ``"cuda:1"``, ... ``dtype``: compute precision of the forward passes (fp32, fp16, bf16,
    by autocast; the weights stay float32 so that TTA's small steps are not lost).

    ``tta``: a ``TTAConfig`` adapts the deblurring module to every image (Algorithm A of the
    paper with the variants the config selects, see ``reblur_deploy.tta``: crops, early stop,
    video carry-over, where ``reset()`` starts a new video, and the speed options); the weights
    must hold a reblurring module. ``tta_steps=N`` is the shorthand for ``tta=TTAConfig(steps=N)``.

    ``tile``/``tile_overlap``: process frames in overlapping tiles of this size (bounds memory;
    use an overlap of at least the network's receptive field for seamless results). With TTA,
    tiling implies crop TTA on tiles of the same size unless the config gives ``crop``.
    ``max_memory`` (bytes, or a size such as ``"2G"``; default: what the device has free): a
    frame whose estimated need exceeds it is tiled automatically (and TTA then adapts on crops),
    with a warning; one that fits in no tiles is refused with an ``InputError``. A
    ``memory.TilePlanner`` makes these choices.

    ``color``: channel order of array inputs and outputs, ``"rgb"`` or ``"bgr"`` (OpenCV).

    ``backend``: the inference engine (``reblur_deploy.backends``): ``"auto"`` (the default: the
    fastest engine within 1/255 of eager float32, ONNX Runtime on a graph cached on disk where
    it can run, else eager), ``"torch"`` (eager), ``"compile"``, ``"onnxruntime"`` or
    ``"tensorrt"``; ``backend_options`` are passed to it (e.g. ``{"model": "model.onnx"}``,
    ``{"engine": "model.engine"}``). TTA needs gradients, so it runs only with the torch
    backends (``auto`` then picks eager, as it does with ``max_memory``, whose estimates are
    eager PyTorch's). ``backend.describe()`` says which engine runs.

    Thread-safe: calls are serialised by a lock (TTA changes the module's weights while it
    runs). For parallelism use one Deblurrer per device or thread.
    """

    def __init__(
        self,
        weights: str | os.PathLike | LoadedWeights | dict[str, nn.Module | None] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "fp32",
        tta_steps: int = 0,
        tta: TTAConfig | None = None,
        batch_size: int = 4,
        *,
        tile: int | None = None,
        tile_overlap: int | None = None,
        color: str = "rgb",
        backend: str = "auto",
        backend_options: dict | None = None,
        max_memory: int | str | None = None,
    ):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        self.batch_size = batch_size
        if color not in ("rgb", "bgr"):
            raise ConfigError(f"color must be 'rgb' or 'bgr', got {color!r}")
        self.color = color
        loaded = self._load(weights)
        self._planner = TilePlanner(self.deblur, self.device, self.size_divisor, tile,
                                    tile_overlap, max_memory, batch_size)  # fmt: skip
        self._lock = threading.Lock()
        if tta_steps < 0:
            raise ConfigError(f"tta_steps must be ≥ 0, got {tta_steps}")
        if tta is not None and tta_steps:
            raise ConfigError("give tta_steps (the shorthand) or tta (a TTAConfig), not both")
        if tta is None and tta_steps:
            tta = TTAConfig(steps=tta_steps)
        if backend == "auto" and (tta is not None or max_memory is not None):
            # TTA needs gradients; and under a memory budget the planner's estimates are those
            # of eager PyTorch, which frees as it goes, while ONNX Runtime's CPU arena keeps the
            # largest working set it saw (350 MB after a 720p unet-lite frame; giving it back
            # after every call cost 30 % of its speed).
            backend = "torch"
        self.backend = create_backend(backend, self.deblur, self.device, self.dtype,
                                      **(backend_options or {}))  # fmt: skip
        if loaded is not None and getattr(self.backend, "metadata", None):  # an exported file
            name = loaded.path.name if loaded.path else "these weights"
            check_exported(self.backend.metadata, self.backend.source, loaded.sha256, name)
        self.tta = tta  # as configured; ``video_mode`` switches the adapter to its video mode
        self._video = False
        self._adapter = None if tta is None else self._make_adapter(tta)
        self._tta_stats = None if tta is None else TTAStats()

    def _load(self, weights) -> LoadedWeights | None:
        """Sets ``deblur``, ``reblur`` (on the device, float32, eval mode) and ``metadata``."""
        if weights is None:
            weights = default_weights(self.device)
        if isinstance(weights, (str, os.PathLike)):
            weights = load_weights(weights)
        loaded = weights if isinstance(weights, LoadedWeights) else None
        if loaded is not None:
            self.metadata = loaded.metadata
            modules = {"deblur": loaded.deblur, "reblur": loaded.reblur}
        elif isinstance(weights, dict):
            self.metadata = {}
            modules = weights
        else:
            raise ConfigError(
                "weights must be a path, a bundled model name, load_weights(...) or "
                f"{{'deblur': module, 'reblur': module}}, got {type(weights).__name__}"
            )
        if not isinstance(modules.get("deblur"), nn.Module):
            raise WeightsError("the weights hold no deblurring module")
        self.deblur = modules["deblur"].to(self.device, torch.float32).eval()
        reblur = modules.get("reblur")
        self.reblur = reblur.to(self.device, torch.float32).eval() if reblur is not None else None
        self.size_divisor = int(getattr(self.deblur, "size_divisor", 1))
        return loaded

    @property
    def tile(self) -> int | None:
        """The fixed tile size (None: whole frames, tiled only when they would not fit); the
        runner's out-of-memory retry lowers it."""
        return self._planner.tile

    @tile.setter
    def tile(self, size: int | None) -> None:
        self._planner.tile = size

    @property
    def tile_overlap(self) -> int:
        return self._planner.overlap

    @property
    def tta_config(self) -> TTAConfig | None:
        """The TTA settings in effect (``tta`` completed: the crop that tiling implies, the
        steps' autocast, the video mode when on); None without TTA."""
        return None if self._adapter is None else self._adapter.config

    @property
    def tta_stats(self) -> TTAStats | None:
        """What TTA did in the last batch of the last call (None without TTA)."""
        return self._tta_stats

    def _make_adapter(self, tta: TTAConfig) -> TestTimeAdapter:
        if self.backend.frozen:
            raise ConfigError(
                f"test-time adaptation needs gradients, and the {self.backend.name} backend runs "
                "frozen weights; use --backend torch (or compile) with --tta"
            )
        if self.reblur is None:
            raise WeightsError(
                "test-time adaptation needs a reblurring module, and these weights hold "
                "only a deblurring module; use weights trained with the reblurring loss"
            )
        crop = tta.crop if tta.crop is not None else self.tile  # whole frames would not fit
        amp = tta.amp_dtype or self._step_dtype(crop is not None)
        lr = tta.lr or recommended_lr(self.metadata)  # unset: the weights' own rate
        config = dataclasses.replace(tta, crop=crop, amp_dtype=amp, lr=lr)
        return TestTimeAdapter(self.deblur, self.reblur, config, self._forward)

    def _step_dtype(self, crops: bool) -> torch.dtype | None:
        """Autocast of the TTA steps when the TTAConfig does not say: the pipeline's dtype, but
        bf16 for crop steps on a CPU with native bf16 when it is float32 (measured there; a GPU
        keeps float32 until measured). Crop steps only choose the weight update (L0 and LN are
        separate whole-frame passes in the pipeline's dtype), and on real 720p frames bf16 crop
        steps change the output by at most 1/255 against float32 ones while a video-mode frame
        costs 1.3× less (docs/TTA.md)."""
        if self.dtype != torch.float32:
            return self.dtype
        cpu_bf16 = self.device.type == "cpu" and native_bf16("cpu")
        return torch.bfloat16 if crops and cpu_bf16 else None

    def video_mode(self, on: bool) -> None:
        """Run TTA as configured (``on=False``, the default) or in its video mode
        (``TTAConfig.for_video``: carry-over, one step a frame on crops, bounded drift); without
        TTA a no-op. A switch starts from the original weights."""
        if self.tta is None or on == self._video:
            return
        self._adapter.reset()
        self._adapter = self._make_adapter(self.tta.for_video() if on else self.tta)
        self._video = on

    def reset(self) -> None:
        """Forget what TTA carried over from earlier frames (start of a new video)."""
        if self._adapter is not None:
            self._adapter.reset()

    def __call__(self, images):
        """Deblur an array, a list of arrays or an N×3×H×W tensor; returns the same kind."""
        if isinstance(images, torch.Tensor):
            return self.run_tensor(images)
        if isinstance(images, np.ndarray):
            return self.run_arrays([images])[0]
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            return self.run_arrays(list(images))
        raise InputError(
            f"expected a numpy image, a list of them or a tensor, got {type(images).__name__}"
        )

    def run_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """N×3×H×W float in [0, 1] → the same, on the input's device and dtype."""
        batch = check_tensor(batch)
        outputs = [
            self._infer(chunk).to(batch.device, batch.dtype)
            for chunk in batch.split(self.batch_size)
        ]
        return torch.cat(outputs)

    def run_arrays(self, images: list[np.ndarray], in_place: bool = False) -> list[np.ndarray]:
        """Arrays → arrays; images of equal size share batches. ``in_place=True``: the caller
        gives the arrays up, and a frame deblurred in tiles is written into its own array (a
        frame too large for memory is then held once, not twice)."""
        if self.color == "bgr":
            return [
                swap_red_blue(y) for y in self.run_arrays_rgb([swap_red_blue(x) for x in images])
            ]
        return self.run_arrays_rgb(images, in_place)

    def run_arrays_rgb(self, images: list[np.ndarray], in_place: bool = False) -> list[np.ndarray]:
        results: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(np.shape(image)[:2], []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                tile = self._array_tile(images[chunk[0]])
                if tile is not None:
                    for i in chunk:
                        results[i] = self._tiled_array(images[i], tile, in_place)
                    continue
                converted = [array_to_tensor(images[i]) for i in chunk]
                out = self._infer(torch.cat([tensor for tensor, _ in converted]))
                for i, y, (_, layout) in zip(chunk, out, converted, strict=True):
                    results[i] = tensor_to_array(y, layout)
        return results  # type: ignore[return-value]

    def plan_frame(self, height: int, width: int, channels: int, itemsize: int,
                   pending: int = 0) -> int | None:  # fmt: skip
        """The tile size an 8/16-bit frame of this size runs in, straight from its array (None:
        whole, or with TTA, which adapts on float tensors). Raises ``InputError`` when even
        tiles would not fit; ``pending``: the frame's bytes when it is not decoded yet (the
        runner asks from the file's header, before spending memory on it)."""
        if self._adapter is not None:
            return None
        return self._planner.frame_tile((1, 3, height, width), channels * itemsize, pending)

    def _array_tile(self, image) -> int | None:
        if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
            return None  # array_to_tensor says what is wrong with it
        channels = image.shape[2] if image.ndim == 3 else 1
        return self.plan_frame(*image.shape[:2], channels, image.itemsize)

    def _tiled_array(self, image: np.ndarray, tile: int, in_place: bool = False) -> np.ndarray:
        """Deblur one frame tile by tile from its array into the output array (with
        ``in_place``, the input's own: ``tiled_rows`` hands on rows no later tile reads), never
        copying it whole into float: a frame too large for memory stays within the budget."""
        height, width = image.shape[:2]
        _, layout = array_to_tensor(image[:1, :1])  # dtype and channels
        out = image if in_place else np.empty_like(image)

        def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            return array_to_tensor(image[y0:y1, x0:x1])[0].to(self.device)

        with self._lock, torch.inference_mode():
            overlap, divisor = self._planner.overlap, self.size_divisor
            parts = tiled_rows(self.backend.infer, read, height, width, tile, overlap, divisor,
                               self.batch_size)  # fmt: skip
            for top, rows in parts:
                bottom = top + rows.shape[-2]
                alpha = None if layout.alpha is None else image[top:bottom, :, 3]
                part = dataclasses.replace(layout, shape=(bottom - top, *image.shape[1:]),
                                           alpha=alpha)  # fmt: skip
                out[top:bottom] = tensor_to_array(_finite(rows.clamp_(0.0, 1.0))[0], part)
        return out

    def stream(
        self, frames: Iterable[np.ndarray], latency: float | None = None
    ) -> Iterator[np.ndarray]:
        """Deblur an iterable of frames (a camera, a decoder), yielding results in order.

        Frames are batched for throughput: a batch is run when it holds ``batch_size`` frames or,
        with ``latency`` (seconds), as soon as its oldest frame has waited that long (checked
        as frames arrive; ``latency=0`` runs every frame at once, the lowest delay). The models
        stay resident; with TTA carry-over the adapted weights follow the stream.
        """
        buffer: list[np.ndarray] = []
        oldest = 0.0
        for frame in frames:
            if not buffer:
                oldest = time.perf_counter()
            buffer.append(frame)
            waited = time.perf_counter() - oldest
            if len(buffer) >= self.batch_size or (latency is not None and waited >= latency):
                yield from self.run_arrays(buffer)
                buffer = []
        if buffer:
            yield from self.run_arrays(buffer)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """One gradient-free pass of MD over whole frames (tiled when asked or when the frame
        would not fit in memory), any H×W."""
        tile = self._planner.frame_tile(batch.shape)
        if tile is not None:
            return run_tiled(self.backend.infer, batch, tile, self._planner.overlap,
                             self.size_divisor, self.batch_size)  # fmt: skip
        padded, h, w = pad_to_multiple(batch, self.size_divisor)
        return self.backend.infer(padded)[..., :h, :w]

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        """The model boundary: float32 NCHW in [0, 1] → float32 NCHW in [0, 1] on the device."""
        batch = batch.to(self.device, torch.float32)
        with self._lock:
            if self._adapter is not None:
                config = self._adapter.config
                # Whole-frame steps, unless the frame is too big for them: then fitting crops.
                crop = (
                    self._planner.crop_size(batch.shape, config.crops)
                    if config.crop is None
                    else None
                )
                result = self._adapter(batch, crop=crop)
                out, self._tta_stats = result.image, result.stats
            else:
                with torch.inference_mode():
                    out = self._forward(batch).clamp_(0.0, 1.0)  # in place; NaN stays NaN
        return _finite(out)


def _finite(out: torch.Tensor) -> torch.Tensor:
    """A diverged network must not leak NaN pixels into anyone's pipeline."""
    if not torch.isfinite(out).all():
        raise InputError("the network produced NaN or infinite values (diverged weights?)")
    return out
