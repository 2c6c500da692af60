"""Shared fixtures. Real data comes from ../shared/data (REBLUR_SHARED_DATA overrides it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from reblur_deploy.models import build

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("REBLUR_SHARED_DATA", REPO.parent / "shared" / "data"))

if not (DATA / "gopro" / "blur").is_dir():
    raise pytest.UsageError(
        f"test data not found at {DATA}: clone next to ../shared or set REBLUR_SHARED_DATA"
    )


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (use with ``pytest.mark.usefixtures``). Two OpenMP
    threads on a busy 2-core machine spin-wait for each other (measured: 40 steps of the
    training-loss test took 62 s with 2 threads, 1.1 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-initialise a network's zero-initialised output layer so it is not the identity map."""
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.tail.weight, std=0.02)
    torch.nn.init.normal_(model.tail.bias, std=0.01)
    return model.eval()


@pytest.fixture
def small_unet() -> torch.nn.Module:
    return randomized(build("unet", widths=(8, 12, 16), n_blocks=2))


@pytest.fixture
def small_reblur() -> torch.nn.Module:
    return randomized(build("reblur", n_blocks=1, width=8), seed=1)
