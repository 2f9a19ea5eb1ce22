"""The challenge's file contract, written once: layout (:mod:`.layout`), parquet columns
(:mod:`.columns`), item_info rules and fingerprints (:mod:`.item_info`), the Task 2 item
features (semantic-ID codes, item-level likes/views: :mod:`.item_features`), atomic writes
(:mod:`.files`).

The judge (ctr_eval) owns the contract; mmembed imports this module and never writes a
rule of its own. Dependencies: numpy and pyarrow only.

A dataset ROOT holds ``MicroLens_1M_x1/{train,valid,test,item_info}.parquet`` beside
``item_feature.parquet``, ``item_emb.parquet``, ``item_seq.parquet`` and the cover images
(``item_images/``, ``item_images.zip`` or ``item_images.rar``). Users may pass either ROOT
or ``ROOT/MicroLens_1M_x1``; :func:`find_layout` resolves both.

``item_info.parquet``: row i holds item i, row 0 is the all-zero padding item; columns
``item_id`` int64, ``item_tags`` list of 5 int64 (0 = padding tag), ``item_emb_d128`` list
of 128 float32.

Every reading error is a :class:`DatasetError` (a ``ValueError``) whose message names the
file, column and row and says what would be valid; a missing file raises
:class:`MissingFileError`, which is also a ``FileNotFoundError``.
"""
from __future__ import annotations

from ctr_eval.format.layout import (  # noqa: F401
    SPLIT_DIR_NAME, SPLITS, IMAGE_DIRNAME, CACHE_DIRNAME, EMBEDDING_DIM, TAGS_PER_ITEM,
    LEVEL_MAX, ITEM_INFO_COLUMNS, EXPECTED_LAYOUT, DatasetError, MissingFileError,
    DatasetLayout, find_layout,
)
from ctr_eval.format.columns import (  # noqa: F401
    KIND_NAMES, open_parquet, type_matches, column_type_problems, check_columns, read_columns,
    iter_batches, as_array, first_null_row, list_lengths, list_to_matrix, scalar_to_numpy,
)
from ctr_eval.format.item_info import (  # noqa: F401
    Violation, item_id_violation, tag_violation, embedding_violation, padding_violation,
    item_info_violations, raise_first, check_embedding_table, read_item_info, item_info_table,
    item_table_fingerprint,
)
from ctr_eval.format.files import (  # noqa: F401
    atomic_path, files_digest, write_json,
)
from ctr_eval.format.item_features import (  # noqa: F401
    ITEM_CODES_FILE, check_item_codes, item_codes_table, read_item_codes, read_item_levels,
)

__all__ = [
    "SPLIT_DIR_NAME", "SPLITS", "IMAGE_DIRNAME", "CACHE_DIRNAME", "EMBEDDING_DIM",
    "TAGS_PER_ITEM", "LEVEL_MAX", "ITEM_INFO_COLUMNS", "EXPECTED_LAYOUT", "DatasetError",
    "MissingFileError", "DatasetLayout", "find_layout", "KIND_NAMES", "open_parquet",
    "type_matches", "column_type_problems", "check_columns", "read_columns", "iter_batches",
    "as_array", "first_null_row", "list_lengths", "list_to_matrix", "scalar_to_numpy",
    "Violation", "item_id_violation", "tag_violation", "embedding_violation",
    "padding_violation", "item_info_violations", "raise_first", "check_embedding_table",
    "read_item_info", "item_info_table", "item_table_fingerprint", "atomic_path", "files_digest", "write_json",
    "ITEM_CODES_FILE", "check_item_codes", "item_codes_table", "read_item_codes", "read_item_levels",
]
