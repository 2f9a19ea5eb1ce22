"""validate_dataset: one broken file per rule, with the exact problem it must report."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.datasets import DatasetError, Problem, validate_dataset

X1 = "MicroLens_1M_x1"
INFO = f"{X1}/item_info.parquet"
TRAIN = f"{X1}/train.parquet"
VALID = f"{X1}/valid.parquet"


def edit_column(path, column, edit, type_=None):
    """Rewrite ``column`` of parquet ``path`` as ``edit(list of python values)``."""
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    new = edit(values)
    new_values = values if new is None else new
    index = table.schema.get_field_index(column)
    array = pa.array(new_values, type=type_ or table.schema.field(index).type)
    table = table.set_column(index, pa.field(column, array.type), array)
    pq.write_table(table, path)


def set_value(values, row, value):
    values[row] = value


def check(root, **kwargs):
    kwargs.setdefault("progress", False)
    return validate_dataset(root, **kwargs)


def only_problem(report) -> Problem:
    assert len(report.problems) == 1, report.format()
    return report.problems[0]


def test_clean_dataset_passes(tiny_root):
    report = check(tiny_root, require_images=True)
    assert report.ok, report.format()
    assert report.problems == []
    assert report.image_stats.checked == 600 and report.image_stats.ok_count == 600
    assert report.rows["train"] == 4000 and report.rows["item_info"] == 601
    text = report.format()
    assert text.startswith(f"Dataset check of {tiny_root}: OK")
    assert "images: item_images: 600 checked, 600 ok" in text
    report.raise_if_failed()  # no exception


def test_accepts_x1_folder(tiny_root):
    report = check(tiny_root / X1, check_images=False)
    assert report.ok and report.data_dir == tiny_root


def test_item_info_row_must_hold_its_item(tiny_copy):
    edit_column(tiny_copy / INFO, "item_id", lambda v: set_value(v, 5, 7))
    assert only_problem(check(tiny_copy)) == Problem(
        INFO, "item_id", 5, "row i must hold item i (item_id == row index; row 0 = padding); "
        "1 row breaks this: row 5 (found 7)")


def test_item_info_row0_must_be_padding(tiny_copy):
    def edit(values):
        values[0] = [3, 0, 0, 0, 0]
    edit_column(tiny_copy / INFO, "item_tags", edit)
    edit_column(tiny_copy / INFO, "item_emb_d128", lambda v: set_value(v, 0, [0.5] * 2 + [0.0] * 126))
    assert only_problem(check(tiny_copy)) == Problem(
        INFO, None, 0, "row 0 must be the all-zero padding item (item_id 0, item_tags all 0, "
        "item_emb_d128 all 0); found item_tags [3, 0, 0, 0, 0], item_emb_d128 with 2 non-zero values")


def test_embedding_length_and_finite(tiny_copy):
    edit_column(tiny_copy / INFO, "item_emb_d128", lambda v: set_value(v, 3, [0.1] * 127))
    edit_column(tiny_copy / INFO, "item_emb_d128", lambda v: set_value(v, 9, [float("nan")] * 128))
    messages = [str(p) for p in check(tiny_copy).problems]
    assert messages == [
        f"{INFO} [item_emb_d128] row 3: list length must be 128; 1 row breaks this: row 3 (length 127)",
        f"{INFO} [item_emb_d128] row 9: embedding values must be finite (no NaN or inf); "
        "1 row breaks this: row 9",
    ]


def test_tag_ids_below_vocab_and_non_negative(tiny_copy):
    edit_column(tiny_copy / INFO, "item_tags", lambda v: set_value(v, 2, [5, 20000, 0, 0, 0]))
    edit_column(tiny_copy / "item_feature.parquet", "item_tags",
                lambda v: set_value(v, 4, [-3, 0, 0, 0, 0]))
    problems = check(tiny_copy).problems
    assert problems == [
        Problem(INFO, "item_tags", 2, "tag ids must be in 0..11739 (0 = padding, tag_vocab=11740); "
                "1 row breaks this: row 2 (found 20000)"),
        Problem("item_feature.parquet", "item_tags", 4, "tag ids must be in 0..11739 (0 = padding, "
                "tag_vocab=11740); 1 row breaks this: row 4 (found -3)"),
    ]
    # A smaller vocabulary flags the synthetic data's tags (they go up to 199).
    small = check(tiny_copy, tag_vocab=100, check_images=False).problems
    assert any(p.column == "item_tags" and "tag ids must be in 0..99" in p.message for p in small)


def test_tags_need_five_entries(tiny_copy):
    edit_column(tiny_copy / "item_feature.parquet", "item_tags", lambda v: set_value(v, 0, [1, 2]))
    assert str(only_problem(check(tiny_copy))) == (
        "item_feature.parquet [item_tags] row 0: list length must be 5; "
        "1 row breaks this: row 0 (length 2)")


def test_history_must_be_left_padded(tiny_copy):
    seq = pq.read_table(tiny_copy / TRAIN).column("item_seq").to_pylist()
    row = next(i for i, s in enumerate(seq) if s[0] == 0 and s[-1] != 0)
    edit_column(tiny_copy / TRAIN, "item_seq", lambda v: set_value(v, row, v[row][1:] + [0]))
    assert only_problem(check(tiny_copy)) == Problem(
        TRAIN, "item_seq", row, "history must be zero-LEFT-padded (no 0 after an item id; "
        f"most recent item last); 1 row breaks this: row {row}")


def test_history_lengths_must_be_equal(tiny_copy):
    edit_column(tiny_copy / TRAIN, "item_seq", lambda v: set_value(v, 7, v[7][1:]))
    assert only_problem(check(tiny_copy)) == Problem(
        TRAIN, "item_seq", 7, "list length must be 20 like the file's first row; "
        "1 row breaks this: row 7 (length 19)")


def test_history_ids_within_items(tiny_copy):
    edit_column(tiny_copy / "item_seq.parquet", "item_seq",
                lambda v: set_value(v, 1, v[1][:-1] + [601]))
    assert only_problem(check(tiny_copy)) == Problem(
        "item_seq.parquet", "item_seq", 1, "item ids must be in 0..600 (0 = padding, 1..600 = "
        "items of item_info); 1 row breaks this: row 1 (found 601)")


def test_target_items_need_an_item_info_row(tiny_copy):
    edit_column(tiny_copy / f"{X1}/test.parquet", "item_id", lambda v: set_value(v, 0, 0))
    edit_column(tiny_copy / f"{X1}/test.parquet", "item_id", lambda v: set_value(v, 3, 601))
    assert only_problem(check(tiny_copy)) == Problem(
        f"{X1}/test.parquet", "item_id", 0, "item_id must have an item_info row: 1..600; "
        "2 rows break this: row 0 (found 0), row 3 (found 601)")


def test_labels_and_levels(tiny_copy):
    edit_column(tiny_copy / VALID, "label", lambda v: set_value(v, 4, 2))
    edit_column(tiny_copy / TRAIN, "likes_level", lambda v: set_value(v, 0, 11))
    edit_column(tiny_copy / "item_feature.parquet", "views_level", lambda v: set_value(v, 8, -1))
    problems = {p.file: p for p in check(tiny_copy).problems}
    assert problems == {
        VALID: Problem(VALID, "label", 4, "label must be 0 or 1; 1 row breaks this: row 4 (found 2)"),
        TRAIN: Problem(TRAIN, "likes_level", 0,
                       "likes_level must be in 0..10; 1 row breaks this: row 0 (found 11)"),
        "item_feature.parquet": Problem("item_feature.parquet", "views_level", 8,
                                        "views_level must be in 0..10; 1 row breaks this: "
                                        "row 8 (found -1)"),
    }


def test_examples_are_capped(tiny_copy):
    edit_column(tiny_copy / TRAIN, "label", lambda v: [2] * 7 + v[7:])
    problem = only_problem(check(tiny_copy, max_examples=2))
    assert problem.message == ("label must be 0 or 1; 7 rows break this: "
                               "row 0 (found 2), row 1 (found 2), ...")


def test_missing_and_wrong_type_columns(tiny_copy):
    table = pq.read_table(tiny_copy / TRAIN)
    pq.write_table(table.drop_columns(["label"]), tiny_copy / TRAIN)
    edit_column(tiny_copy / VALID, "user_id", lambda v: [str(x) for x in v], type_=pa.string())
    problems = check(tiny_copy).problems
    assert problems == [
        Problem(TRAIN, "label", None, "missing column (expected type int64; found columns: "
                "user_id, item_seq, likes_level, views_level, item_id)"),
        Problem(VALID, "user_id", None, "found type string, expected type int64"),
    ]


def test_feature_ids_must_cover_items(tiny_copy):
    table = pq.read_table(tiny_copy / "item_feature.parquet")
    pq.write_table(table.slice(0, 598), tiny_copy / "item_feature.parquet")
    assert only_problem(check(tiny_copy, check_images=False)) == Problem(
        "item_feature.parquet", "item_id", None,
        "every item 1..600 of item_info needs a row; 2 missing, e.g. [599, 600]")


def test_duplicate_feature_ids(tiny_copy):
    edit_column(tiny_copy / "item_feature.parquet", "item_id", lambda v: set_value(v, 10, 3))
    problems = check(tiny_copy, check_images=False).problems
    assert problems == [
        Problem("item_feature.parquet", "item_id", 10, "item ids must be unique; 1 id repeats, e.g. [3]"),
        Problem("item_feature.parquet", "item_id", None,
                "every item 1..600 of item_info needs a row; 1 missing, e.g. [11]"),
    ]


def test_truncated_and_missing_files(tiny_copy):
    data = (tiny_copy / TRAIN).read_bytes()
    (tiny_copy / TRAIN).write_bytes(data[: len(data) // 2])
    (tiny_copy / f"{X1}/test.parquet").unlink()
    problems = check(tiny_copy).problems
    assert [(p.file, p.column, p.row) for p in problems] == [(f"{X1}/test.parquet", None, None),
                                                            (TRAIN, None, None)]
    assert problems[0].message.startswith("file not found (expected layout: ROOT/MicroLens_1M_x1/")
    assert problems[1].message.startswith("not a readable parquet file (truncated or corrupt?)")
    report = check(tiny_copy, check_images=False)
    assert report.rows["train"] is None and report.rows["test"] is None
    assert "  train         absent or unreadable" in report.format()


def test_image_problems_counted_fatal_only_when_required(tiny_copy):
    images = tiny_copy / "item_images"
    (images / "3.jpg").unlink()
    (images / "5.jpg").write_bytes(b"")
    (images / "8.jpg").write_bytes(b"this is not a jpeg")
    report = check(tiny_copy)
    assert report.ok, report.format()
    stats = report.image_stats
    assert (stats.checked, stats.missing, stats.empty, stats.undecodable) == (600, 1, 1, 1)
    assert (stats.missing_ids, stats.empty_ids, stats.undecodable_ids) == ([3], [5], [8])
    assert ("images: item_images: 600 checked, 597 ok, 1 missing (e.g. item ids [3]), "
            "1 empty (e.g. item ids [5]), 1 undecodable (e.g. item ids [8])") in report.format()
    strict = check(tiny_copy, require_images=True)
    assert [p.message for p in strict.problems] == [
        "1 of 600 items have no image file, e.g. item ids [3] (covers are required)",
        "1 of 600 items have an empty image file, e.g. item ids [5] (covers are required)",
        "1 of 600 items have an image that cannot be decoded, e.g. item ids [8] "
        "(covers are required)",
    ]
    with pytest.raises(DatasetError, match=r"3 problem\(s\)"):
        strict.raise_if_failed()


def test_require_images_without_any(tiny_copy):
    import shutil

    shutil.rmtree(tiny_copy / "item_images")
    assert check(tiny_copy).ok
    problem = only_problem(check(tiny_copy, require_images=True))
    assert problem.file == "item_images" and problem.message.startswith("no cover images found")


def test_missing_data_dir(tmp_path):
    report = check(tmp_path / "nope")
    assert not report.ok
    assert report.problems[0].message.startswith("data directory not found")
    with pytest.raises(DatasetError, match="data directory not found"):
        report.raise_if_failed()


def test_bad_tag_vocab_argument(tiny_root):
    with pytest.raises(ValueError, match="tag_vocab must be a positive integer, got 0"):
        validate_dataset(tiny_root, tag_vocab=0)


def test_problem_rows_counted_over_batches(tiny_copy, monkeypatch):
    """Row numbers stay global when files are read in several batches."""
    from mmembed.datasets import validate_rules

    monkeypatch.setattr(validate_rules, "BATCH_ROWS", 1000)
    edit_column(tiny_copy / TRAIN, "label", lambda v: set_value(v, 2500, 5))
    edit_column(tiny_copy / TRAIN, "item_seq", lambda v: set_value(v, 3999, v[3999][:-1]))
    problems = check(tiny_copy, check_images=False).problems
    problems = sorted(problems, key=lambda p: p.column)
    assert [(p.column, p.row) for p in problems] == [("item_seq", 3999), ("label", 2500)]
    assert problems[0].message.startswith("list length must be 20 like the file's first row")


def test_nulls_are_flagged(tiny_copy):
    edit_column(tiny_copy / TRAIN, "item_id", lambda v: set_value(v, 12, None))
    edit_column(tiny_copy / TRAIN, "item_seq", lambda v: set_value(v, 30, v[30][:-1] + [None]))
    edit_column(tiny_copy / INFO, "item_tags", lambda v: set_value(v, 6, None))
    problems = sorted(check(tiny_copy, check_images=False).problems, key=lambda p: p.row)
    assert problems == [
        Problem(INFO, "item_tags", 6, "null value (every row needs a value); 1 row breaks this: row 6"),
        Problem(TRAIN, "item_id", 12, "null value (every row needs a value); 1 row breaks this: row 12"),
        Problem(TRAIN, "item_seq", 30, "null value inside the list; 1 row breaks this: row 30"),
    ]


def test_fixed_size_and_large_lists_are_accepted(tiny_copy):
    table = pq.read_table(tiny_copy / INFO)
    emb = table.column("item_emb_d128").combine_chunks()
    fixed = pa.FixedSizeListArray.from_arrays(emb.flatten(), 128)
    tags = table.column("item_tags").cast(pa.large_list(pa.int32()))
    table = table.set_column(2, "item_emb_d128", fixed).set_column(1, "item_tags", tags)
    pq.write_table(table, tiny_copy / INFO)
    assert check(tiny_copy, check_images=False).ok
    fixed_bad = pa.FixedSizeListArray.from_arrays(
        pa.array(np.where(np.arange(len(emb.flatten())) == 128 * 4 + 7, np.inf,
                          emb.flatten().to_numpy()).astype(np.float32)), 128)
    pq.write_table(table.set_column(2, "item_emb_d128", fixed_bad), tiny_copy / INFO)
    assert only_problem(check(tiny_copy, check_images=False)) == Problem(
        INFO, "item_emb_d128", 4, "embedding values must be finite (no NaN or inf); "
        "1 row breaks this: row 4")


def test_truncated_cover_is_undecodable_as_in_extraction(tiny_copy):
    from mmembed.datasets import ItemCatalog

    cover = tiny_copy / "item_images" / "7.jpg"
    cover.write_bytes(cover.read_bytes()[: cover.stat().st_size // 2])
    assert ItemCatalog.from_dir(tiny_copy).load_image(6) is None  # extraction: unusable
    stats = check(tiny_copy).image_stats
    assert (stats.checked, stats.undecodable, stats.undecodable_ids) == (600, 1, [7])
    assert stats.ok_count == 599


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # expected
def test_oversized_covers_are_their_own_category(tiny_copy, monkeypatch):
    from PIL import ImageFile

    from test_images import oversized_jpeg

    def no_decoding(self):
        raise AssertionError("an oversized cover was decoded")

    for item_id in (9, 11):
        (tiny_copy / "item_images" / f"{item_id}.jpg").write_bytes(oversized_jpeg())
    (tiny_copy / "item_images" / "12.jpg").write_bytes(b"not a jpeg")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for item_id in range(1, 601):  # only the oversized covers stay in the folder
        if item_id not in (9, 11, 12):
            (tiny_copy / "item_images" / f"{item_id}.jpg").unlink()
    report = check(tiny_copy)
    stats = report.image_stats
    assert (stats.too_large, stats.too_large_ids, stats.undecodable, stats.missing) == (2, [9, 11], 1, 597)
    assert stats.ok_count == 0
    assert ("1 undecodable (e.g. item ids [12]), 2 too large (over 40,000,000 pixels, "
            "e.g. item ids [9, 11])") in report.format()
    strict = check(tiny_copy, require_images=True)
    assert strict.problems[-1].message == (
        "2 of 600 items have an image over 40,000,000 pixels (refused without decoding), "
        "e.g. item ids [9, 11] (covers are required)")
