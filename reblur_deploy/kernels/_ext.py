"""Build and load the C++/CUDA extension in csrc/ on first use (never required).

``torch.utils.cpp_extension.load`` compiles the sources with ninja into a build folder under
the user cache (``reblur_deploy.cache``), ``~/.cache/reblur-deploy/ext/<key>``
(``$REBLUR_EXT_CACHE`` overrides it), where ``key`` hashes the sources, the
compiler flags, the torch and Python versions and the CPU's instruction-set flags: a second
process, or a second test run, loads the built library in milliseconds. The library registers
the ``torch.ops.reblur_ext`` operators (no Python module of its own).

The CUDA kernels are compiled in only when this torch has CUDA, a GPU is visible and torch finds
the CUDA toolkit (``CUDA_HOME``); otherwise the build is CPU-only. Any failure (no compiler, no
ninja, a compile error) is remembered and reported by ``extension_error()``; callers then use
the pure-torch implementations.

``nvcc_compile`` compiles one .cu file with nvcc against torch's headers without linking: the
syntax and type check that CI runs on machines where torch has no CUDA.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import torch

from .. import cache
from ..device import cpu_flags

LOG = logging.getLogger("reblur_deploy.kernels")
# -fopenmp: ATen's parallel_for is inline OpenMP code, parallel only when the extension itself is
# compiled with OpenMP; it then shares torch's OpenMP runtime (the libgomp.so.1 torch loaded).
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
CPP_FLAGS = ["-O3", "-fopenmp-simd", "-ffp-contract=off", *OPENMP]
# nvcc: IEEE division and square root; contraction is controlled in the sources
CUDA_FLAGS = ["-O3", "--prec-div=true", "--prec-sqrt=true"]
ARCHS = ("sm_80", "sm_90")

_lock = threading.Lock()
_state: dict[str, object] = {}


def source_dir() -> Path | None:
    """The kernels' sources, csrc/ beside this file (package data, so an installed wheel can
    build them; ``$REBLUR_CPP_EXT`` overrides it), or None when absent."""
    env = os.environ.get("REBLUR_CPP_EXT")
    folder = Path(env) if env else Path(__file__).resolve().parent / "csrc"
    return folder if (folder / "histmatch.cpp").is_file() else None


def cache_root() -> Path:
    env = os.environ.get("REBLUR_EXT_CACHE")
    if env:
        return Path(env)
    return cache.cache_root() / "ext"


def cuda_buildable() -> tuple[bool, str]:
    """Whether the CUDA kernels can be compiled and run here, and if not, why."""
    if torch.version.cuda is None:
        return False, "this torch is a CPU-only build"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return False, "torch finds no CUDA toolkit (set CUDA_HOME)"
    return True, ""


def _sources(folder: Path, cuda: bool) -> list[Path]:
    sources = [folder / "histmatch.cpp"]
    if cuda:
        sources += sorted(folder.glob("*.cu"))
    return sources


def _key(folder: Path, sources: list[Path], cuda: bool) -> str:
    digest = hashlib.sha256()
    for path in [*sources, *sorted(folder.glob("*.h"))]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for part in (CPP_FLAGS, CUDA_FLAGS if cuda else [], ARCHS if cuda else ()):
        digest.update(repr(part).encode())
    digest.update(f"{torch.__version__}|{sys.version}|{torch.version.cuda}|{cuda}".encode())
    digest.update(cpu_flags().encode())
    return digest.hexdigest()[:16]


def load_extension() -> bool:
    """Build (first time) and load the extension; True when ``torch.ops.reblur_ext`` is ready.

    Thread-safe and attempted once per process; ``extension_error()`` says why it failed.
    """
    with _lock:
        if "loaded" in _state:
            return bool(_state["loaded"])
        _state["loaded"] = False
        try:
            _state["cuda"] = _build()
            _state["loaded"] = True
        except Exception as e:  # a missing compiler, ninja or header: fall back to torch
            message = str(e).strip().splitlines()
            _state["error"] = message[-1] if message else type(e).__name__
            LOG.warning("reblur-deploy kernels: C++ extension unavailable (%s)", _state["error"])
        return bool(_state["loaded"])


def _build() -> bool:
    from torch.utils.cpp_extension import load, verify_ninja_availability

    folder = source_dir()
    if folder is None:
        raise RuntimeError(
            "the kernels/csrc/ sources are not in this installation (set REBLUR_CPP_EXT)"
        )
    verify_ninja_availability()
    cuda, why = cuda_buildable()
    if not cuda:
        LOG.info("reblur-deploy kernels: building the CPU kernels only (%s)", why)
    sources = _sources(folder, cuda)
    key = _key(folder, sources, cuda)
    build_dir = cache_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    if not (build_dir / f"reblur_ext_{key}.so").exists():  # say why the first run pauses
        LOG.warning("reblur-deploy kernels: building the C++ kernels for this machine, once "
                    "(about 20 s; cached in %s)", build_dir)  # fmt: skip
    cuda_flags = list(CUDA_FLAGS)
    if cuda:
        major, minor = torch.cuda.get_device_capability()
        cuda_flags.append(f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}")
    load(
        name=f"reblur_ext_{key}",
        sources=[str(s) for s in sources],
        extra_cflags=CPP_FLAGS,
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=OPENMP,
        extra_include_paths=[str(folder)],
        build_directory=str(build_dir),
        with_cuda=cuda,
        is_python_module=False,
        verbose=os.environ.get("REBLUR_EXT_VERBOSE") == "1",
    )
    return cuda


def extension_error() -> str | None:
    return _state.get("error")  # type: ignore[return-value]


def extension_has_cuda() -> bool:
    return bool(_state.get("loaded") and _state.get("cuda"))


# ---------------------------------------------------------------------------------------------
# nvcc syntax/type check (CI, machines whose torch has no CUDA)

# Generated at torch's build time and shipped only with CUDA builds of torch; its content there
# is this one line, so a CPU build can still compile the CUDA sources for checking.
_CMAKE_MACROS = "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"


def find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").is_file():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc") or (
        "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None
    )


def nvcc_command(source: Path, output: Path, stub_dir: Path, archs=ARCHS) -> list[str]:
    """The nvcc command that compiles ``source`` to an object file the way the extension build
    would (torch's include paths and nvcc flags, C++20, the C++ ABI of this torch)."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found")
    command = [nvcc, "-c", str(source), "-o", str(output), "-std=c++20"]
    command += [f"-I{p}" for p in include_paths()]
    command += [f"-I{source.parent}", f"-I{stub_dir}", f"-I{sysconfig.get_paths()['include']}"]
    command += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    command += [*COMMON_NVCC_FLAGS, *CUDA_FLAGS, "--compiler-options", "-fPIC"]
    for arch in archs:
        number = arch.removeprefix("sm_")
        command.append(f"-gencode=arch=compute_{number},code={arch}")
    return command


def nvcc_compile(source: Path, workdir: Path, archs=ARCHS) -> subprocess.CompletedProcess:
    """Compile one .cu file (no link) into ``workdir``; returns the finished nvcc process."""
    workdir.mkdir(parents=True, exist_ok=True)
    stub = workdir / "stub"
    header = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    from torch.utils.cpp_extension import include_paths

    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").is_file() for p in include_paths()):
        header.parent.mkdir(parents=True, exist_ok=True)
        header.write_text(_CMAKE_MACROS)
    command = nvcc_command(source, workdir / f"{source.stem}.o", stub, archs)
    return subprocess.run(command, capture_output=True, text=True)
