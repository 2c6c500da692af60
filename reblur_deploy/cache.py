"""The user cache: what reblur-deploy builds once per machine and keeps between runs.

One root, ``~/.cache/reblur-deploy`` (``$XDG_CACHE_HOME/reblur-deploy`` when that is set;
``$REBLUR_CACHE_DIR`` replaces the whole path), with one folder per kind of thing:

* ``ext/``: the C++/CUDA kernels, built on first use (``$REBLUR_EXT_CACHE`` overrides it);
* ``graphs/``: ONNX graphs of the networks that the default CPU engine runs, keyed by the
  weights and the versions that made them (``backends.graphs.cached_onnx_file``);
* the GStreamer registry of the element's plugin path.

Everything in it can be deleted at any time: it is rebuilt when next needed.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "REBLUR_CACHE_DIR"


def cache_root() -> Path:
    """The cache's root folder (not created)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reblur-deploy"
