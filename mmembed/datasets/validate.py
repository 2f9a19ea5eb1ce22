"""Check a dataset against the MicroLens MM-CTR layout before any long work starts.

``validate_dataset(data_dir)`` reads every file by pyarrow batches and returns a
:class:`ValidationReport`: each problem names the file, column and (0-based) row and says
what would be valid. Image files that are missing, empty, undecodable (judged by the same
full decode extraction uses) or too large (over ``MAX_COVER_PIXELS``, refused before
decoding) are counted and listed; they are problems only with ``require_images=True``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .covers import MAX_COVER_PIXELS, classify_covers
from .images import ImageSource, open_image_source
from ctr_eval.checks import check_positive_int
from ctr_eval.format import (EXPECTED_LAYOUT, SPLITS, DatasetError, DatasetLayout, MissingFileError,
                             find_layout, open_parquet)
from .validate_rules import (Context, Findings, check_item_emb, check_item_feature,
                             check_item_info_file, check_split, check_user_sequences, item_count)

logger = logging.getLogger(__name__)

CHALLENGE_TAG_VOCAB = 11_740
REQUIRED_FILES = ("train", "valid", "test", "item_info", "item_feature")
OPTIONAL_FILES = ("item_emb", "item_seq")


@dataclass(frozen=True)
class Problem:
    """One broken rule: ``row`` is a 0-based row index (the first offending row) or None."""

    file: str
    column: str | None
    row: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.column is not None:
            where += f" [{self.column}]"
        if self.row is not None:
            where += f" row {self.row}"
        return f"{where}: {self.message}"


@dataclass
class ImageStats:
    """Counts over the items checked; ``*_ids`` hold the first few item ids of each kind."""

    source: str | None = None
    checked: int = 0
    missing: int = 0
    empty: int = 0
    undecodable: int = 0
    too_large: int = 0
    missing_ids: list[int] = field(default_factory=list)
    empty_ids: list[int] = field(default_factory=list)
    undecodable_ids: list[int] = field(default_factory=list)
    too_large_ids: list[int] = field(default_factory=list)

    @property
    def ok_count(self) -> int:
        return self.checked - sum(getattr(self, kind) for kind in _IMAGE_KINDS)

    def format(self) -> str:
        if self.source is None:
            return "images: none found"
        parts = [f"images: {self.source}: {self.checked} checked, {self.ok_count} ok"]
        for kind in _IMAGE_KINDS:
            count = getattr(self, kind)
            if count:
                limit = f"over {MAX_COVER_PIXELS:,} pixels, " if kind == "too_large" else ""
                parts.append(f"{count} {kind.replace('_', ' ')} "
                             f"({limit}e.g. item ids {getattr(self, kind + '_ids')})")
        return ", ".join(parts)


# ImageStats attribute -> what require_images=True reports
_IMAGE_KINDS = {
    "missing": "have no image file",
    "empty": "have an empty image file",
    "undecodable": "have an image that cannot be decoded",
    "too_large": f"have an image over {MAX_COVER_PIXELS:,} pixels (refused without decoding)",
}


@dataclass
class ValidationReport:
    data_dir: Path
    problems: list[Problem]
    image_stats: ImageStats
    rows: dict[str, int | None]  # rows per file; None when absent or unreadable
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"Dataset check of {self.data_dir}: {verdict}"]
        for name, n in self.rows.items():
            lines.append(f"  {name:<13} {'absent or unreadable' if n is None else f'{n:,} rows'}")
        lines.append("  " + self.image_stats.format())
        lines += [f"  note: {note}" for note in self.notes]
        if self.problems:
            lines.append("Problems (rows are 0-based):")
            lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise DatasetError(self.format())


def _check_images(ctx: Context, layout: DatasetLayout, item_ids: np.ndarray,
                  stats: ImageStats, max_examples: int, progress: bool) -> None:
    source_path = layout.image_source
    if source_path is None:
        return
    stats.source = ctx.name(source_path)
    try:
        source: ImageSource = open_image_source(source_path, layout.cache_dir, progress)
    except DatasetError as err:
        ctx.findings.add(ctx.name(source_path), None, None, str(err).split(": ", 1)[-1])
        return
    try:
        found = classify_covers(source, item_ids, progress=progress)
    except DatasetError as err:  # e.g. a corrupt member while extracting a RAR
        ctx.findings.add(ctx.name(source_path), None, None, str(err).split(": ", 1)[-1])
        return
    stats.checked = len(item_ids)
    for kind, ids in found.items():
        attr = kind.replace(" ", "_")  # "too large" -> too_large
        setattr(stats, attr, len(ids))
        setattr(stats, attr + "_ids", ids[:max_examples])


def _image_problems(ctx: Context, layout: DatasetLayout, stats: ImageStats) -> None:
    if stats.source is None:
        ctx.findings.add("item_images", None, None,
                         f"no cover images found in {layout.root} (expected item_images/ "
                         f"holding {{item_id}}.jpg, item_images.zip or item_images.rar)")
        return
    for kind, what in _IMAGE_KINDS.items():
        count = getattr(stats, kind)
        if count:
            ctx.findings.add(stats.source, None, None,
                             f"{count} of {stats.checked} items {what}, e.g. item ids "
                             f"{getattr(stats, kind + '_ids')} (covers are required)")


def _readable(path: Path) -> bool:
    try:
        open_parquet(path)  # reads the footer only
    except DatasetError:
        return False
    return True


def validate_dataset(data_dir: str | os.PathLike, require_images: bool = False,
                     max_examples: int = 5, tag_vocab: int = CHALLENGE_TAG_VOCAB,
                     check_images: bool = True, progress: bool = True) -> ValidationReport:
    """Check every file of the dataset at ``data_dir`` (ROOT or ROOT/MicroLens_1M_x1).

    ``tag_vocab``: tag ids must be below it (the challenge's 11,740 by default).
    ``check_images=False`` skips the image scan (``require_images`` then has no effect).
    Returns a report; call ``report.raise_if_failed()`` to stop on problems.
    """
    check_positive_int("tag_vocab", tag_vocab)
    stats = ImageStats()
    try:
        layout = find_layout(data_dir)
    except MissingFileError as err:
        problem = Problem(str(data_dir), None, None, str(err).split(": ", 1)[-1])
        return ValidationReport(Path(data_dir), [problem], stats, {})
    findings = Findings(max_examples)
    ctx = Context(layout.root, findings, None, tag_vocab)
    notes: list[str] = []
    for name in REQUIRED_FILES:
        if not layout.has(name):
            findings.add(ctx.name(layout.path(name)), None, None, f"file not found ({EXPECTED_LAYOUT})")
    feature_ids = _count_items(ctx, layout, notes)
    rows, checked_ids = _check_files(ctx, layout)
    feature_ids = checked_ids if checked_ids is not None else feature_ids
    for name in OPTIONAL_FILES:
        if not layout.has(name):
            notes.append(f"{ctx.name(layout.path(name))} absent (optional)")
    if check_images:
        if feature_ids is not None:
            item_ids = np.unique(feature_ids[feature_ids > 0])
        else:
            item_ids = np.arange(1, (ctx.n_items or 0) + 1, dtype=np.int64)
        _check_images(ctx, layout, item_ids, stats, max_examples, progress)
        if require_images:
            _image_problems(ctx, layout, stats)
    problems = [Problem(*entry) for entry in findings.messages()]
    return ValidationReport(layout.root, problems, stats, rows, notes)


def _count_items(ctx: Context, layout: DatasetLayout, notes: list[str]) -> np.ndarray | None:
    """Set ``ctx.n_items`` (N) from item_info, else from item_feature's largest id; returns
    item_feature's ids when it had to read them."""
    feature_ids = None
    if layout.has("item_info"):
        ctx.n_items = item_count(layout.item_info)
        if ctx.n_items == 0:
            ctx.findings.add(ctx.name(layout.item_info), None, None,
                             "needs N+1 rows (row 0 = padding, row i = item i); found none")
    if layout.has("item_feature") and ctx.n_items is None:
        quiet = Context(layout.root, Findings(1), None, ctx.tag_vocab)  # its findings come later
        _, feature_ids = check_item_feature(quiet, layout.item_feature)
        if feature_ids is not None and len(feature_ids):
            ctx.n_items = int(feature_ids.max())
            notes.append(f"N = {ctx.n_items} taken from item_feature.parquet (no readable item_info)")
    if ctx.n_items is None:
        notes.append("item id ranges not checked: neither item_info nor item_feature is readable")
    return feature_ids


def _check_files(ctx: Context, layout: DatasetLayout) -> tuple[dict[str, int | None], np.ndarray | None]:
    """Run every file's rules; (rows read per file (None: absent or unreadable), the item
    ids of item_feature when it was read)."""
    checks = {
        "item_info": lambda path: check_item_info_file(ctx, path),
        "item_feature": lambda path: check_item_feature(ctx, path),
        **{split: (lambda path, s=split: check_split(ctx, path, s)) for split in SPLITS},
        "item_emb": lambda path: check_item_emb(ctx, path),
        "item_seq": lambda path: check_user_sequences(ctx, path),
    }
    rows: dict[str, int | None] = {}
    feature_ids = None
    for name, check in checks.items():
        if not layout.has(name):
            rows[name] = None
            continue
        logger.info("checking %s", layout.path(name))
        result = check(layout.path(name))
        if name == "item_feature":
            result, feature_ids = result
        rows[name] = result if _readable(layout.path(name)) else None
    return rows, feature_ids
