"""The one interface every backend implements: ``infer(batch) -> batch``.

A backend runs a deblurring network on the model boundary of the whole project: float32 RGB
NCHW in [0, 1], H and W already padded to the network's ``size_divisor``. It returns float32
NCHW of the same shape on its own device, not clamped (the pipeline crops and clamps).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError, ReblurError


class BackendError(ReblurError):
    """A backend could not be built or failed to run (engine build, session creation, ...)."""


class Backend:
    """Runs a deblurring network on batches of frames.

    Attributes every backend has:

    * ``name``: ``"eager"``, ``"compile"``, ``"onnxruntime"`` or ``"tensorrt"``.
    * ``device``, ``dtype``: where it runs and its compute precision (inputs and outputs are
      float32 whatever the precision).
    * ``frozen``: True when the weights are baked into a graph or an engine (no gradients, so
      no test-time adaptation inside the backend). ``module`` is then the torch network the
      backend was built from (None when it was loaded from a file alone): adapt that one in
      torch. For ``eager`` and ``compile`` (``frozen`` False) ``module`` is the network run.
    * ``size_divisor``: H and W must be multiples of it.
    * ``min_batch``/``max_batch`` and ``min_size``/``max_size`` (H, W): the shapes it accepts
      (None: no limit). Batches above ``max_batch`` are split and run in turn.
    """

    name = "backend"
    frozen = True

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        size_divisor: int,
        module: nn.Module | None = None,
        *,
        min_batch: int = 1,
        max_batch: int | None = None,
        min_size: tuple[int, int] | None = None,
        max_size: tuple[int, int] | None = None,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.size_divisor = int(size_divisor)
        self.module = module
        self.min_batch = int(min_batch)
        self.max_batch = max_batch
        self.min_size = min_size
        self.max_size = max_size

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """N×3×H×W float in [0, 1] (H, W multiples of ``size_divisor``) → float32, same shape,
        on ``self.device``."""
        self.check(batch)
        batch = batch.to(self.device, torch.float32).contiguous()
        step = self.max_batch or batch.shape[0]
        outputs = [self._run(chunk.contiguous()) for chunk in batch.split(step)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    __call__ = infer

    def check(self, batch: torch.Tensor) -> None:
        """Raise ``InputError`` for a batch this backend cannot take, saying why."""
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != 3:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise InputError(f"{self.name}: expected an N×3×H×W RGB tensor, got {shape}")
        if not batch.is_floating_point():
            raise InputError(f"{self.name}: expected a float tensor in [0, 1], got {batch.dtype}")
        n, _, h, w = batch.shape
        if h % self.size_divisor or w % self.size_divisor:
            raise InputError(
                f"{self.name}: H and W must be multiples of {self.size_divisor}, got {h}×{w}; "
                "pad the input first (Deblurrer does this for you)"
            )
        if n < self.min_batch:
            raise InputError(f"{self.name}: this engine takes batches of ≥ {self.min_batch}")
        if self.min_size and (h < self.min_size[0] or w < self.min_size[1]):
            raise InputError(
                f"{self.name}: {h}×{w} is below the smallest size this engine was built for "
                f"({self.min_size[0]}×{self.min_size[1]}); rebuild it with a smaller --min-shape"
            )
        if self.max_size and (h > self.max_size[0] or w > self.max_size[1]):
            raise InputError(
                f"{self.name}: {h}×{w} is above the largest size this engine was built for "
                f"({self.max_size[0]}×{self.max_size[1]}); rebuild it with a larger --max-shape "
                "or tile the image"
            )

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """One batch within the limits, float32 contiguous on ``self.device`` → float32."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs: name, device, precision and limits."""
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")
        limits = f", batch ≤ {self.max_batch}" if self.max_batch else ""
        if self.max_size:
            limits += f", up to {self.max_size[0]}×{self.max_size[1]}"
        return f"{self.name} on {self.device} ({precision}{limits})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
