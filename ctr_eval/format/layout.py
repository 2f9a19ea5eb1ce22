"""Where a dataset's files are: the MicroLens layout, its names and its errors."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SPLIT_DIR_NAME = "MicroLens_1M_x1"
SPLITS = ("train", "valid", "test")
IMAGE_DIRNAME = "item_images"
CACHE_DIRNAME = ".mmembed_cache"  # derived files beside the data (e.g. unpacked covers)
EMBEDDING_DIM = 128
TAGS_PER_ITEM = 5
LEVEL_MAX = 10  # likes_level / views_level are 0..10
ITEM_INFO_COLUMNS = {"item_id": "int", "item_tags": "int_list", "item_emb_d128": "float_list"}

EXPECTED_LAYOUT = (
    "expected layout: ROOT/MicroLens_1M_x1/{train,valid,test,item_info}.parquet, "
    "ROOT/item_feature.parquet, ROOT/item_emb.parquet, ROOT/item_seq.parquet and "
    "ROOT/item_images/ (or item_images.zip / item_images.rar); pass ROOT or "
    "ROOT/MicroLens_1M_x1 as data_dir"
)


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or breaks the MicroLens layout."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file or folder the layout needs does not exist."""


@dataclass(frozen=True)
class DatasetLayout:
    """Resolved paths of one dataset. Each file path is set whether or not it exists;
    :meth:`has` says which exist and :meth:`require` raises a clear error for a missing one.
    Image sources are ``None`` when absent."""

    root: Path
    split_dir: Path
    train: Path
    valid: Path
    test: Path
    item_info: Path
    item_feature: Path
    item_emb: Path
    item_seq: Path
    images_dir: Path | None
    images_zip: Path | None
    images_rar: Path | None

    FILE_NAMES = ("train", "valid", "test", "item_info", "item_feature", "item_emb", "item_seq")

    @property
    def cache_dir(self) -> Path:
        """Folder beside the data for derived files (e.g. images extracted from a RAR)."""
        return self.root / CACHE_DIRNAME

    @property
    def image_source(self) -> Path | None:
        """The cover-image source used by default: folder, then zip, then rar."""
        return self.images_dir or self.images_zip or self.images_rar

    def path(self, name: str) -> Path:
        if name not in self.FILE_NAMES:
            raise ValueError(f"unknown dataset file {name!r}; valid: {', '.join(self.FILE_NAMES)}")
        return getattr(self, name)

    def split(self, name: str) -> Path:
        """The parquet file of split ``name`` (train, valid or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self.path(name)

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def require(self, name: str) -> Path:
        """The path of file ``name``; :class:`MissingFileError` when it does not exist."""
        path = self.path(name)
        if not path.is_file():
            raise MissingFileError(f"{path}: file not found ({EXPECTED_LAYOUT})")
        return path

    def present(self) -> dict[str, bool]:
        return {name: self.has(name) for name in self.FILE_NAMES}


def _find_images(root: Path) -> tuple[Path | None, Path | None, Path | None]:
    folder: Path | None = root / IMAGE_DIRNAME
    if folder.is_dir():
        # Unpacking item_images.zip by hand often yields item_images/item_images/.
        nested = folder / IMAGE_DIRNAME
        if nested.is_dir() and not any(folder.glob("*.jpg")):
            folder = nested
    else:
        folder = None
    zip_path = root / f"{IMAGE_DIRNAME}.zip"
    rar_path = root / f"{IMAGE_DIRNAME}.rar"
    return (folder, zip_path if zip_path.is_file() else None,
            rar_path if rar_path.is_file() else None)


def find_layout(data_dir: str | os.PathLike) -> DatasetLayout:
    """Resolve ``data_dir`` (ROOT or ROOT/MicroLens_1M_x1) into a :class:`DatasetLayout`.

    ROOT is recognised by its MicroLens_1M_x1/ folder or its item_feature.parquet; the
    split folder by any of train/valid/test/item_info.parquet. Raises
    :class:`MissingFileError` when ``data_dir`` does not exist or holds neither.
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise MissingFileError(f"{data_dir}: not a directory; pass the dataset folder "
                               f"({EXPECTED_LAYOUT})")
    if not data_dir.is_dir():
        raise MissingFileError(f"{data_dir}: data directory not found ({EXPECTED_LAYOUT})")
    data_dir = data_dir.resolve()
    if (data_dir / SPLIT_DIR_NAME).is_dir() or (data_dir / "item_feature.parquet").is_file():
        root, split_dir = data_dir, data_dir / SPLIT_DIR_NAME
    elif any((data_dir / f"{name}.parquet").is_file() for name in (*SPLITS, "item_info")):
        root, split_dir = data_dir.parent, data_dir
    else:
        raise MissingFileError(
            f"{data_dir}: holds neither {SPLIT_DIR_NAME}/ nor item_feature.parquet nor "
            f"train/valid/test/item_info.parquet ({EXPECTED_LAYOUT})"
        )

    def root_file(name: str) -> Path:
        # Files normally in ROOT; accept them inside the split folder when ROOT lacks them.
        path = root / name
        if not path.is_file() and (split_dir / name).is_file():
            return split_dir / name
        return path

    images_dir, images_zip, images_rar = _find_images(root)
    layout = DatasetLayout(
        root=root, split_dir=split_dir,
        train=split_dir / "train.parquet", valid=split_dir / "valid.parquet",
        test=split_dir / "test.parquet", item_info=split_dir / "item_info.parquet",
        item_feature=root_file("item_feature.parquet"), item_emb=root_file("item_emb.parquet"),
        item_seq=root_file("item_seq.parquet"),
        images_dir=images_dir, images_zip=images_zip, images_rar=images_rar,
    )
    logger.debug("dataset layout %s: %s", root, layout.present())
    return layout
