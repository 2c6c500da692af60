"""The GStreamer element ``reblurdeblur``: Deblurrer inside a GStreamer pipeline.

::

    reblur-gst-launch filesrc location=in.mp4 ! decodebin ! videoconvert ! reblurdeblur \\
        weights=unet-lite ! videoconvert ! x264enc ! mp4mux ! filesink location=out.mp4

The element is a Python element (``element.py``) that GStreamer's Python plugin loader (Debian:
gstreamer1.0-python3-plugin-loader, python3-gst-1.0) finds through ``GST_PLUGIN_PATH``: the
loader imports every file under ``<path>/python/`` in its own embedded Python (the system's),
which then needs this package and torch on ``PYTHONPATH``. ``plugin_env()`` gives an
environment where that works: ``reblur-gst-launch`` runs gst-launch-1.0 in it, and
``python -m reblur_deploy.gst`` prints it for programs that embed GStreamer themselves.

Two traps it avoids: the embedded Python locates its standard library from the first
``python3`` on PATH, so an activated virtual environment's ``bin`` (whose python3 belongs to
another Python build) must not come first; and GStreamer caches a failed plugin scan in its
registry, so the element gets a registry file of its own.

This module imports nothing from GStreamer: only the loaded plugin does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

from ..cache import cache_root

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin"
# GStreamer 1.22's core warns about every element made by PyGObject 3.42 ("The created element
# should be floating, this is probably caused by faulty bindings"): a known mismatch of the two
# Debian 12 packages' reference conventions, harmless, fixed in later gst-python releases.
FALSE_ALARM = "The created element should be floating"


def _registry(python_paths: list[str]) -> Path:
    """A registry file per version of the element and Python path: GStreamer rescans plugins
    only when their files change, so a registry written by another version (or by a failed
    scan) is never read again."""
    key = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        key.update(f"{path}:{path.stat().st_mtime_ns}".encode())
    key.update(os.pathsep.join(python_paths).encode())
    return cache_root() / f"gstreamer-registry-{key.hexdigest()[:16]}.bin"


# The element's properties that must be checked before the pipeline runs, by their gst-launch
# names. GObject's own range check only warns and keeps the old value, so the element checks
# them (and loads its model) when it goes to READY; but sinks open their files at NULL → READY
# before it, so reblur-gst-launch checks the same properties before it starts the pipeline:
# a refused value then leaves no empty output file behind.
_NUMBERS = {  # name → (type, lowest allowed value, what the rule says)
    "tile": (int, 0, "≥ 0"),
    "tta-steps": (int, 0, "≥ 0"),
    "tta": (int, 0, "≥ 0"),
    "tta-interval": (int, 1, "≥ 1"),
    "tta-lr": (float, 0, "≥ 0 (0: the rate the weights recommend)"),
}


def check_properties(values: dict[str, object]) -> None:
    """Raise ``ConfigError`` (or ``WeightsError``) for a property value the element refuses.
    ``values``: gst-launch names → values (strings, as on a command line, or numbers);
    properties not given keep their defaults, which are valid."""
    import math

    from ..backends import ALIASES, NAMES
    from ..device import resolve_device, resolve_dtype
    from ..errors import ConfigError
    from ..weights import resolve

    for name, (kind, lowest, rule) in _NUMBERS.items():
        if name not in values:
            continue
        try:
            value = kind(values[name])
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be {rule}, got {values[name]!r}") from None
        bad = not math.isfinite(value) or value < lowest
        if bad:
            raise ConfigError(f"{name} must be {rule}, got {values[name]}")
    if values.get("weights"):
        resolve(str(values["weights"]))
    if "dtype" in values:
        resolve_dtype(str(values["dtype"]))
    if "device" in values:
        resolve_device(str(values["device"]))
    backend = str(values.get("backend", "auto"))
    if backend.endswith((".onnx", ".engine", ".plan")):
        if not Path(backend).is_file():
            raise ConfigError(f"no exported file {backend!r} (backend)")
    elif backend not in ("auto", *NAMES, *ALIASES):
        raise ConfigError(f"unknown backend {backend!r}; choose auto, {', '.join(NAMES)}, or "
                          "an exported .onnx file or TensorRT .engine")  # fmt: skip


def launch_properties(args: list[str]) -> list[dict[str, str]]:
    """The properties given to each ``reblurdeblur`` of a gst-launch command line."""
    elements, current = [], None
    for token in args:
        if token == "reblurdeblur":
            current = {}
            elements.append(current)
        elif current is not None and "=" in token and not token.startswith(("!", "-")):
            name, value = token.split("=", 1)
            current[name] = value.strip("'\"")
        else:
            current = None  # "!", a new element, caps
    return elements


def plugin_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) made ready for the element: GST_PLUGIN_PATH and
    PYTHONPATH (this package and its site-packages) prepended, GST_REGISTRY set, and the bin
    folders of virtual environments taken off PATH."""
    env = dict(os.environ if environ is None else environ)
    package_root = str(Path(__file__).resolve().parents[2])  # holds reblur_deploy/
    # Only site-packages: the loader's Python has its own standard library.
    python_paths = []
    for path in (package_root, *site.getsitepackages()):
        if path not in python_paths and Path(path).is_dir():
            python_paths.append(path)

    def prepend(key: str, values: list[str]) -> None:
        old = env.get(key)
        env[key] = os.pathsep.join(values + ([old] if old else []))

    prepend("GST_PLUGIN_PATH", [str(PLUGIN_DIR)])
    prepend("PYTHONPATH", python_paths)
    env.setdefault("GST_REGISTRY", str(_registry(python_paths)))
    folders = env.get("PATH", os.defpath).split(os.pathsep)
    kept = [p for p in folders if not (Path(p).parent / "pyvenv.cfg").exists()]
    env["PATH"] = os.pathsep.join(kept)
    env.pop("VIRTUAL_ENV", None)
    return env


USAGE = """\
Usage: reblur-gst-launch [GST-LAUNCH OPTIONS] PIPELINE-DESCRIPTION

  gst-launch-1.0 with the reblurdeblur element available (see docs/DEPLOY.md), e.g.

  reblur-gst-launch filesrc location=in.mp4 ! decodebin ! videoconvert ! \\
      reblurdeblur weights=unet-lite tta-steps=5 ! videoconvert ! x264enc ! mp4mux ! \\
      filesink location=out.mp4

  Element properties: gst-inspect-1.0 reblurdeblur, in the environment that
  `python -m reblur_deploy.gst` prints. gst-launch-1.0's own options: gst-launch-1.0 --help.
"""


def launch() -> None:
    """``reblur-gst-launch ARGS``: gst-launch-1.0 ARGS with the element available."""
    if sys.argv[1:] in (["--help"], ["-h"]):
        print(USAGE, end="")
        return
    if sys.argv[1:] == ["--version"]:
        from .._version import __version__

        print(f"reblur-gst-launch, version {__version__}")
        return
    from ..errors import ReblurError

    try:
        for values in launch_properties(sys.argv[1:]):
            check_properties(values)
    except ReblurError as e:  # as the element would say it, before any sink opens a file
        sys.exit(f"ERROR: reblurdeblur: {e}")
    program = shutil.which("gst-launch-1.0")
    if program is None:
        sys.exit(
            "error: gst-launch-1.0 is not installed (Debian: apt install gstreamer1.0-tools "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "gstreamer1.0-python3-plugin-loader python3-gst-1.0)"
        )
    env = plugin_env()
    Path(env["GST_REGISTRY"]).parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([program, *sys.argv[1:]], env=env, stderr=subprocess.PIPE, text=True)
    try:
        held = ""  # GLib puts an empty line before a warning: hold it until the next line
        for line in child.stderr:  # everything but the loader's known false alarm
            if FALSE_ALARM in line:
                held = ""
            elif not line.strip():
                sys.stderr.write(held)
                held = line
            else:
                sys.stderr.write(held + line)
                held = ""
        sys.stderr.write(held)
        sys.exit(child.wait())
    except KeyboardInterrupt:  # gst-launch got the Ctrl-C too and stops by itself
        sys.exit(child.wait())


def main() -> None:
    """Print the shell lines that make ``reblurdeblur`` available to GStreamer programs."""
    env = plugin_env({})
    for key in ("GST_PLUGIN_PATH", "PYTHONPATH", "GST_REGISTRY"):
        print(f"export {key}={env[key]}")
    print("# and run them outside an activated virtual environment (see reblur_deploy.gst)")


if __name__ == "__main__":
    main()
