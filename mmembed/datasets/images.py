"""Cover-image sources: a folder of ``{item_id}.jpg``, a zip or a RAR archive.

Every source maps an item id to the image's bytes (``None`` when absent or empty) and
gives a cheap identity (names and sizes, never the pixels) for catalog fingerprints.
Sources are picklable: open file handles are dropped on pickling and reopened lazily in
each process, so a catalog can go to DataLoader workers.

A RAR archive is extracted once into ``ROOT/.mmembed_cache/item_images/``; a marker file
records the archive's size and mtime, and a changed archive is extracted again. Members
that would land outside that folder are refused. Stored (uncompressed) members are read
by ``rarfile`` itself; compressed ones need the ``unar`` tool.

Whether a cover can be used is :mod:`mmembed.datasets.covers`' job.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
from PIL import Image

from ctr_eval.format import IMAGE_DIRNAME, DatasetError, MissingFileError, atomic_path

from .covers import decode_image

logger = logging.getLogger(__name__)

MARKER_NAME = ".mmembed_extracted.json"
_ITEM_FILE = re.compile(r"^(\d+)\.jpg$")
UNAR_HINT = ("reading compressed RAR members needs the `unar` tool "
             "(Debian/Ubuntu: apt-get install unar; macOS: brew install unar), "
             "or unpack the archive into an item_images/ folder beside it")

class ImageSource(ABC):
    """Maps item ids to cover-image bytes."""

    kind = "abstract"

    @abstractmethod
    def read(self, item_id: int) -> bytes | None:
        raise NotImplementedError

    def load(self, item_id: int) -> Image.Image | None:
        return decode_image(self.read(item_id), f"{self.describe()} item {item_id}")

    @abstractmethod
    def sizes(self, item_ids: np.ndarray) -> np.ndarray:
        """Byte size of each item's image, -1 where there is none (no file read)."""
        raise NotImplementedError

    def identity(self, item_ids: np.ndarray) -> bytes:
        """Bytes that change when any listed item's image changes name or size."""
        return self.kind.encode() + np.ascontiguousarray(self.sizes(item_ids)).tobytes()

    def describe(self) -> str:
        return self.kind


class FolderImageSource(ImageSource):
    """A folder holding ``{item_id}.jpg`` files."""

    kind = "folder"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MissingFileError(f"{self.folder}: image folder not found "
                                   f"(expected a folder of {{item_id}}.jpg files)")

    def file_for(self, item_id: int) -> Path:
        return self.folder / f"{int(item_id)}.jpg"

    def read(self, item_id: int) -> bytes | None:
        path = self.file_for(item_id)
        try:
            data = path.read_bytes()
        except OSError as err:  # missing or unreadable: the item has no image
            logger.debug("%s: no image: %s", path, err)
            return None
        if not data:
            logger.debug("%s: empty image file", path)
            return None
        return data

    def sizes(self, item_ids: np.ndarray) -> np.ndarray:
        found: dict[str, int] = {}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.is_file():
                    found[entry.name] = entry.stat().st_size
        return np.array([found.get(f"{int(i)}.jpg", -1) for i in item_ids], dtype=np.int64)

    def describe(self) -> str:
        return str(self.folder)


class ZipImageSource(ImageSource):
    """A zip holding ``item_images/{item_id}.jpg`` (or ``{item_id}.jpg``); members are read
    directly from the archive, nothing is extracted."""

    kind = "zip"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: image archive not found")
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        self._lock = threading.Lock()
        # item id -> (member name, size, crc); the first member wins on duplicates.
        self.members: dict[int, tuple[str, int, int]] = {}
        for info in self._archive().infolist():
            match = _ITEM_FILE.match(PurePosixPath(info.filename).name)
            if match and not info.is_dir():
                self.members.setdefault(int(match.group(1)),
                                        (info.filename, info.file_size, info.CRC))
        logger.debug("%s: %d item images", self.path, len(self.members))

    def _archive(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise DatasetError(f"{self.path}: not a readable zip archive "
                                   f"(truncated or corrupt?): {err}") from err
            self._pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zip"], state["_pid"], state["_lock"] = None, -1, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def read(self, item_id: int) -> bytes | None:
        member = self.members.get(int(item_id))
        if member is None or member[1] == 0:
            return None
        try:
            with self._lock:
                return self._archive().read(member[0])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            logger.debug("%s: member %s unreadable: %s", self.path, member[0], err)
            return None

    def sizes(self, item_ids: np.ndarray) -> np.ndarray:
        return np.array([self.members.get(int(i), ("", -1, 0))[1] for i in item_ids], np.int64)

    def identity(self, item_ids: np.ndarray) -> bytes:
        crcs = np.array([self.members.get(int(i), ("", -1, 0))[2] for i in item_ids], np.int64)
        return super().identity(item_ids) + crcs.tobytes()

    def describe(self) -> str:
        return str(self.path)


def safe_member_path(archive: Path, name: str) -> PurePosixPath:
    """The path of member ``name`` relative to the extraction folder (a leading
    ``item_images/`` is dropped); refuses names that would land outside that folder."""
    clean = name.replace("\\", "/")
    parts = PurePosixPath(clean).parts
    if (clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or ".." in parts
            or not parts):
        raise DatasetError(
            f"{archive}: member {name!r} would be extracted outside the image folder; "
            f"refusing to extract it (absolute paths and '..' are not allowed in member names)")
    if parts[0] == IMAGE_DIRNAME and len(parts) > 1:
        parts = parts[1:]
    return PurePosixPath(*parts)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX flock; no locking elsewhere)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: concurrent extractions stay correct, only wasteful
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rarfile():
    import rarfile

    return rarfile


class RarImageSource(FolderImageSource):
    """``item_images.rar`` extracted once into ``cache_dir/item_images/``, then read as a
    folder. Extraction happens on first image access or on :meth:`prepare`. Once extracted,
    the member list comes from the marker file, so later runs skip parsing the archive."""

    kind = "rar"

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike,
                 progress: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: image archive not found")
        self.folder = Path(cache_dir) / IMAGE_DIRNAME
        self.progress = progress
        self._plan: list[tuple[str, str]] | None = None  # (member name, relative dest)
        self.members: dict[int, tuple[int, int]] = {}  # item id -> (size, crc)
        self._compressed = False
        self._ready = False
        marker = self._read_marker()
        if marker is not None:
            self.members = {int(i): (int(size), int(crc)) for i, size, crc in marker["items"]}
        else:
            self._scan()
            if self._compressed:
                self._check_tool()

    def _scan(self) -> None:
        """Parse the archive's headers; refuse unsafe names before anything is written."""
        rarfile = _rarfile()
        try:
            with rarfile.RarFile(self.path, errors="strict") as archive:
                infos = [info for info in archive.infolist() if not info.is_dir()]
        except (rarfile.Error, OSError, EOFError) as err:
            raise DatasetError(f"{self.path}: not a readable RAR archive "
                               f"(truncated or corrupt?): {err}") from err
        archive_size = self.path.stat().st_size
        for info in infos:  # a cut-off download: headers parse, data runs past the end
            data_offset = getattr(info, "data_offset", None)
            if data_offset is not None and data_offset + info.compress_size > archive_size:
                raise DatasetError(f"{self.path}: not a readable RAR archive (truncated?): "
                                   f"member {info.filename!r} ends past the end of the file")
        self._plan = [(info.filename, str(safe_member_path(self.path, info.filename)))
                      for info in infos]
        self.members = {}
        for info, (_, rel) in zip(infos, self._plan):
            match = _ITEM_FILE.match(rel)
            if match:
                self.members.setdefault(int(match.group(1)), (info.file_size, info.CRC))
        self._compressed = any(info.compress_type != rarfile.RAR_M0 for info in infos)

    def _check_tool(self) -> None:
        rarfile = _rarfile()
        try:
            rarfile.tool_setup()
        except rarfile.RarCannotExec as err:
            raise DatasetError(f"{self.path}: holds compressed members and no RAR "
                               f"decompressor was found; {UNAR_HINT}") from err

    def _stamp(self) -> dict:
        stat = self.path.stat()
        return {"archive": self.path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _read_marker(self) -> dict | None:
        """The marker's content when it describes this very archive, else None."""
        try:
            data = json.loads((self.folder / MARKER_NAME).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            return None
        if any(data.get(key) != value for key, value in self._stamp().items()):
            return None
        return data

    def is_extracted(self) -> bool:
        return self._read_marker() is not None

    def prepare(self) -> None:
        """Extract the archive unless the cache already holds this exact archive."""
        if self._ready:
            return
        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"{self.folder.parent}: cannot create the image cache ({err}); pass "
                          f"cache_dir= to ItemCatalog.from_dir to put it elsewhere") from err
        with _exclusive_lock(self.folder.parent / f"{IMAGE_DIRNAME}.lock"):
            if not self.is_extracted():
                self._extract()
        self._ready = True

    def _extract(self) -> None:
        if self._plan is None:  # the cache was valid when this source was made, not now
            self._scan()
        if self._compressed:
            self._check_tool()
        rarfile = _rarfile()
        tmp = self.folder.parent / f".{IMAGE_DIRNAME}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        logger.info("extracting %s (%d files) into %s", self.path, len(self._plan), self.folder)
        from ctr_eval.progress import progress

        try:
            with rarfile.RarFile(self.path, errors="strict") as archive:
                for name, rel in progress(self._plan, desc=f"extract {self.path.name}",
                                          unit="file", enabled=self.progress):
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        data = archive.read(name)
                    except rarfile.RarCannotExec as err:
                        raise DatasetError(f"{self.path}: member {name!r}: {UNAR_HINT}") from err
                    except (rarfile.Error, OSError, EOFError) as err:
                        raise DatasetError(f"{self.path}: member {name!r} is corrupt "
                                           f"(archive damaged?): {err}") from err
                    dest.write_bytes(data)  # write errors (disk full...) propagate as they are
            marker = {**self._stamp(), "members": len(self._plan),
                      "items": [[i, size, crc] for i, (size, crc) in self.members.items()]}
            with atomic_path(tmp / MARKER_NAME) as marker_tmp:
                marker_tmp.write_text(json.dumps(marker))
            if self.folder.exists():
                shutil.rmtree(self.folder)
            os.replace(tmp, self.folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def read(self, item_id: int) -> bytes | None:
        self.prepare()
        return super().read(item_id)

    def sizes(self, item_ids: np.ndarray) -> np.ndarray:
        return np.array([self.members.get(int(i), (-1, 0))[0] for i in item_ids], np.int64)

    def identity(self, item_ids: np.ndarray) -> bytes:
        crcs = np.array([self.members.get(int(i), (-1, 0))[1] for i in item_ids], np.int64)
        return ImageSource.identity(self, item_ids) + crcs.tobytes()

    def describe(self) -> str:
        return str(self.path)


def open_image_source(path: str | os.PathLike, cache_dir: str | os.PathLike,
                      progress: bool = True) -> ImageSource:
    """An image source for a folder, a ``.zip`` or a ``.rar`` at ``path``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return FolderImageSource(path)
    if not path.exists():
        raise MissingFileError(f"{path}: image source not found (expected a folder of "
                               f"{{item_id}}.jpg files, a .zip or a .rar archive)")
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return ZipImageSource(path)
    if suffix == ".rar":
        return RarImageSource(path, cache_dir, progress=progress)
    raise DatasetError(f"{path}: unsupported image source; expected a folder of "
                       f"{{item_id}}.jpg files, a .zip or a .rar archive")
