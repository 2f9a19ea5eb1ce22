"""Atomic file writes (a crash leaves the old file or nothing, never half a file) and a
cheap digest of files."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    A crash or exception leaves ``path`` untouched (the old file, or nothing), never a
    half-written file. The temporary file lives in the same directory so the final
    ``os.replace`` is atomic on POSIX file systems; the result gets the usual umask mode
    (mkstemp alone would leave 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path


def files_digest(files: "list[tuple[str, Path]]") -> str:
    """Cheap identity of files: 16 hex digits of a sha256 over each (label, path)'s label,
    size and first and last 64 KiB, in the order given (missing files are skipped)."""
    import hashlib

    digest = hashlib.sha256()
    for label, path in files:
        if not Path(path).is_file():
            continue
        size = Path(path).stat().st_size
        digest.update(f"{label}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(65536))
            handle.seek(max(0, size - 65536))
            digest.update(handle.read(65536))
    return digest.hexdigest()[:16]
