"""What a training run writes as it goes: metrics.jsonl and, when available, TensorBoard
(rank 0 only), and the run's config.json."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reblur_deploy.errors import DependencyError

from .config import TrainConfig


def finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: non-finite floats become strings."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
        for k, v in values.items()
    }


class RunLog:
    """metrics.jsonl (and TensorBoard when available) on rank 0."""

    def __init__(self, cfg: TrainConfig, out: Path, enabled: bool, truncate_after: int | None):
        """``enabled``: this process writes (rank 0); ``truncate_after``: a resumed run's
        iteration, after which what a killed run logged is dropped."""
        self.enabled = enabled
        self.writer = None
        self.file = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        path = out / "metrics.jsonl"
        if truncate_after is not None and path.exists():  # drop what a killed run logged later
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iter", 0) <= truncate_after
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")  # noqa: SIM115 (closed in close())
        if cfg.tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if cfg.tensorboard == "on":
                    raise DependencyError(
                        "--tensorboard on needs the tensorboard package: pip install tensorboard"
                    ) from None
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def _write(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(finite(entry)) + "\n")
        self.file.flush()

    def train(self, iteration: int, lr: float, means: dict[str, float], rate: float) -> None:
        if not self.enabled:
            return
        self._write({"iter": iteration, "lr": lr, **means, "it_per_s": round(rate, 4)})
        if self.writer is not None:
            for key, value in means.items():
                self.writer.add_scalar(f"train/{key}", value, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)

    def val(self, iteration: int, metrics: dict[str, float], images: int) -> None:
        if not self.enabled:
            return
        self._write({"iter": iteration, "val": metrics, "val_images": images})
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"val/{key}", value, iteration)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
