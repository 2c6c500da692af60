"""Atomic file writes: every output is written under a temporary name beside its final name
and renamed only when complete, so a crash, Ctrl-C or a full disk never leaves a truncated
file under the final name. A temporary name is at most as long as the longest legal name."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, ReblurError

_UMASK = os.umask(0)
os.umask(_UMASK)
NAME_MAX = 255  # bytes in a file name (ext4, XFS, Btrfs, tmpfs, APFS, NTFS)
TOKEN_BYTES = len(".4194304-01234567.part")  # the longest ".<pid>-<random>.part" (Linux pids)


def check_name(path: str | os.PathLike) -> None:
    """Refuse a path with a name (of the file or a folder) longer than file systems take,
    before any work is done for it."""
    for name in Path(path).parts:
        size = len(os.fsencode(name))
        if size > NAME_MAX:
            raise ReblurError(
                f"cannot write {path}: {name[:20]}… is {size} bytes long, and file names hold "
                f"at most {NAME_MAX}; choose a shorter one with -o"
            )


def check_writable(target: str | os.PathLike) -> None:
    """Refuse, before any work, an output whose name is too long or whose folder cannot be
    created or written (a read-only mount, a file where a folder should be)."""
    check_name(target)
    folder = Path(target).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {target}: {folder} is not a writable folder")


def _temporary_stem(path: Path) -> str:
    """What ``path``'s temporary names start with: its stem, or, where ``.<stem><token><suffix>``
    would exceed NAME_MAX, the stem cut short plus a hash of it (outputs stay apart)."""
    stem = os.fsencode(path.stem)
    room = NAME_MAX - 1 - TOKEN_BYTES - len(os.fsencode(path.suffix))
    if len(stem) <= room:
        return path.stem
    digest = hashlib.sha256(stem).hexdigest()[:8]
    return f"{stem[: max(room - 9, 0)].decode(errors='ignore')}~{digest}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``path`` left by writers that no longer run (killed with
    SIGKILL, or by a power cut): their names carry the writer's process id."""
    path = Path(path)
    stem = _temporary_stem(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(stem)}.*.part{glob.escape(path.suffix)}"):
        pid = tmp.name[len(stem) + 2 :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def temporary_path(path: str | os.PathLike) -> Path:
    """Create and return a new empty file ``.<stem>.<pid>-<random>.part<suffix>`` beside
    ``path`` (the stem shortened for long names), after removing stale ones of earlier, dead
    writers (``remove_stale``).

    The real suffix stays last (encoders choose formats by it); the file gets the permissions
    of an ordinary new file (umask), unlike ``mkstemp``'s private 0600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        while True:
            token = f"{os.getpid()}-{secrets.token_hex(4)}"
            tmp = path.with_name(f".{_temporary_stem(path)}.{token}.part{path.suffix}")
            with contextlib.suppress(FileExistsError), open(tmp, "xb"):
                return tmp
    except OSError as e:
        raise ReblurError(f"cannot write {path}: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for ``path``; rename it to ``path`` when the block succeeds,
    delete it when the block raises. OS errors become one-line ``ReblurError``s."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        # Writers such as safetensors replace the file they are given: set the mode again.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        raise ReblurError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
