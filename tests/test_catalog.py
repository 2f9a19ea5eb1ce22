"""ItemCatalog: reading item_feature.parquet, lazy images, subset, pickle, fingerprint."""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmembed.datasets import DatasetError, ItemCatalog, MissingFileError


def feature_table(root):
    return pq.read_table(root / "item_feature.parquet")


def rewrite_feature(root, column, edit):
    table = feature_table(root)
    values = table.column(column).to_pylist()
    edit(values)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index),
                             pa.array(values, table.schema.field(index).type))
    pq.write_table(table, root / "item_feature.parquet")


def test_from_dir_matches_parquet(tiny_root):
    cat = ItemCatalog.from_dir(tiny_root)
    table = feature_table(tiny_root)
    assert len(cat) == 600
    assert cat.item_ids.dtype == np.int64 and cat.item_ids.shape == (600,)
    assert cat.item_ids.tolist() == table.column("item_id").to_pylist()
    assert cat.titles == table.column("item_title").to_pylist()
    assert all(isinstance(t, str) and t for t in cat.titles)
    assert cat.tags.dtype == np.int64 and cat.tags.shape == (600, 5)
    assert cat.tags.tolist() == table.column("item_tags").to_pylist()
    assert cat.likes_level.tolist() == table.column("likes_level").to_pylist()
    assert cat.views_level.tolist() == table.column("views_level").to_pylist()
    assert cat.has_images and cat.image_source.kind == "folder"
    assert repr(cat).startswith("ItemCatalog(600 items from ")


def test_images_load_as_rgb(tiny_root):
    cat = ItemCatalog.from_dir(tiny_root)
    pos = 17
    item_id = int(cat.item_ids[pos])
    path = tiny_root / "item_images" / f"{item_id}.jpg"
    image = cat.load_image(pos)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    with Image.open(path) as expected:
        assert image.size == expected.size == (128, 128)
        assert np.array_equal(np.asarray(image), np.asarray(expected.convert("RGB")))
    assert cat.image_bytes(pos) == path.read_bytes()


def test_without_images(tiny_root):
    cat = ItemCatalog.from_dir(tiny_root, images=None)
    assert not cat.has_images
    assert cat.load_image(0) is None and cat.image_bytes(0) is None


def test_missing_empty_and_broken_images_give_none(tiny_copy):
    images = tiny_copy / "item_images"
    (images / "1.jpg").unlink()
    (images / "2.jpg").write_bytes(b"")
    (images / "3.jpg").write_bytes(b"\xff\xd8\xff garbage")
    cat = ItemCatalog.from_dir(tiny_copy)
    assert [cat.load_image(i) for i in range(3)] == [None, None, None]
    assert cat.image_bytes(0) is None and cat.image_bytes(1) is None
    assert cat.load_image(3).size == (128, 128)


def test_position_checks(tiny_root):
    cat = ItemCatalog.from_dir(tiny_root)
    with pytest.raises(IndexError, match=r"position 600 out of range for a catalog of 600 items "
                                         r"\(valid: 0..599\)"):
        cat.load_image(600)
    with pytest.raises(IndexError, match="position -1 out of range"):
        cat.image_bytes(-1)
    with pytest.raises(TypeError, match="position must be an integer, got float"):
        cat.load_image(1.0)
    assert cat.load_image(np.int64(3)) is not None


def test_subset_keeps_order_and_sources(tiny_root):
    cat = ItemCatalog.from_dir(tiny_root)
    sub = cat.subset([5, 0, 42])
    assert sub.item_ids.tolist() == [6, 1, 43]
    assert sub.titles == [cat.titles[5], cat.titles[0], cat.titles[42]]
    assert np.array_equal(sub.tags, cat.tags[[5, 0, 42]])
    assert sub.likes_level.tolist() == cat.likes_level[[5, 0, 42]].tolist()
    assert sub.image_bytes(2) == cat.image_bytes(42)
    assert len(cat.subset([])) == 0
    with pytest.raises(IndexError, match=r"positions\[1\] = 600 out of range"):
        cat.subset([0, 600])
    with pytest.raises(ValueError, match="positions must not repeat an item"):
        cat.subset([1, 1])
    with pytest.raises(TypeError, match="positions must be a 1-d sequence of integers"):
        cat.subset([0.5])


def test_pickle_round_trip(tiny_root):
    cat = ItemCatalog.from_dir(tiny_root).subset(np.arange(10, 30))
    clone = pickle.loads(pickle.dumps(cat))
    assert clone.item_ids.tolist() == cat.item_ids.tolist()
    assert clone.titles == cat.titles
    assert clone.fingerprint() == cat.fingerprint()
    assert np.array_equal(np.asarray(clone.load_image(3)), np.asarray(cat.load_image(3)))


def test_fingerprint_is_stable_and_location_free(tiny_root, tiny_copy):
    first = ItemCatalog.from_dir(tiny_root).fingerprint()
    assert len(first) == 64 and int(first, 16) >= 0
    assert ItemCatalog.from_dir(tiny_root).fingerprint() == first
    assert ItemCatalog.from_dir(tiny_copy).fingerprint() == first  # a copy elsewhere
    assert ItemCatalog.from_dir(tiny_root, images=None).fingerprint() != first
    cat = ItemCatalog.from_dir(tiny_root)
    assert cat.subset(np.arange(600)).fingerprint() == first
    assert cat.subset(np.arange(599)).fingerprint() != first


def test_fingerprint_changes_with_title_tags_and_images(tiny_copy):
    base = ItemCatalog.from_dir(tiny_copy).fingerprint()
    rewrite_feature(tiny_copy, "item_title", lambda v: v.__setitem__(3, v[3] + "!"))
    after_title = ItemCatalog.from_dir(tiny_copy).fingerprint()
    assert after_title != base
    rewrite_feature(tiny_copy, "item_tags", lambda v: v.__setitem__(3, [1, 0, 0, 0, 0]))
    after_tags = ItemCatalog.from_dir(tiny_copy).fingerprint()
    assert after_tags != after_title
    image = tiny_copy / "item_images" / "9.jpg"
    image.write_bytes(image.read_bytes() + b"\0")
    after_image = ItemCatalog.from_dir(tiny_copy).fingerprint()
    assert after_image != after_tags
    image.rename(tiny_copy / "item_images" / "9.jpg.bak")
    assert ItemCatalog.from_dir(tiny_copy).fingerprint() != after_image


def test_null_titles_and_tags(tiny_copy):
    rewrite_feature(tiny_copy, "item_title", lambda v: v.__setitem__(0, None))
    rewrite_feature(tiny_copy, "item_tags", lambda v: v.__setitem__(1, None))
    cat = ItemCatalog.from_dir(tiny_copy)
    assert cat.titles[0] == "" and cat.tags[1].tolist() == [0, 0, 0, 0, 0]


def test_bad_feature_files(tiny_copy):
    rewrite_feature(tiny_copy, "item_id", lambda v: v.__setitem__(4, 2))
    with pytest.raises(DatasetError, match=r"item_feature\.parquet: item_id 2 appears more than "
                                           r"once \(rows 1 and 4\)"):
        ItemCatalog.from_dir(tiny_copy)
    rewrite_feature(tiny_copy, "item_id", lambda v: v.__setitem__(4, 0))
    with pytest.raises(DatasetError, match=r"row 4: item_id 0 is not valid; item ids are positive"):
        ItemCatalog.from_dir(tiny_copy)
    rewrite_feature(tiny_copy, "item_id", lambda v: v.__setitem__(4, 5))
    rewrite_feature(tiny_copy, "item_tags", lambda v: v.__setitem__(7, [1, 2, 3]))
    with pytest.raises(DatasetError, match=r"column 'item_tags' row 7: list of length 3, "
                                           r"expected length 5 \(1 row differs\)"):
        ItemCatalog.from_dir(tiny_copy)
    table = feature_table(tiny_copy)
    table = table.set_column(1, "item_title", pa.array(range(600), pa.int64()))
    pq.write_table(table, tiny_copy / "item_feature.parquet")
    with pytest.raises(DatasetError, match=r"item_feature\.parquet: column 'item_title': found "
                                           r"type int64, expected type string"):
        ItemCatalog.from_dir(tiny_copy)


def test_truncated_and_missing_feature_file(tiny_copy):
    path = tiny_copy / "item_feature.parquet"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"item_feature\.parquet: not a readable parquet file "
                                           r"\(truncated or corrupt\?\)"):
        ItemCatalog.from_dir(tiny_copy)
    path.unlink()
    with pytest.raises(MissingFileError, match=r"item_feature\.parquet: file not found "
                                               r"\(expected layout: "):
        ItemCatalog.from_dir(tiny_copy)


def test_from_records(tmp_path):
    png = tmp_path / "cover.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(png)
    gray = Image.new("L", (8, 8), 128)
    cat = ItemCatalog.from_records([
        {"title": "red cover", "tags": [4, 2], "image": png},
        {"title": None, "image": gray},
        {"title": "no image", "image": str(tmp_path / "missing.jpg")},
        {"title": "plain"},
    ])
    assert cat.item_ids.tolist() == [1, 2, 3, 4]
    assert cat.titles == ["red cover", "", "no image", "plain"]
    assert cat.tags.tolist()[:2] == [[4, 2, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert cat.likes_level is None and cat.views_level is None
    assert cat.has_images
    red = cat.load_image(0)
    assert red.mode == "RGB" and red.size == (20, 10) and red.getpixel((0, 0)) == (255, 0, 0)
    assert cat.load_image(1).mode == "RGB" and cat.load_image(1).getpixel((0, 0)) == (128,) * 3
    assert cat.load_image(2) is None and cat.load_image(3) is None
    assert Image.open(__import__("io").BytesIO(cat.image_bytes(1))).size == (8, 8)
    clone = pickle.loads(pickle.dumps(cat))
    assert clone.fingerprint() == cat.fingerprint()
    assert clone.load_image(1).getpixel((0, 0)) == (128,) * 3
    before = ItemCatalog.from_records([{"title": "x", "image": gray.copy()}]).fingerprint()
    assert ItemCatalog.from_records([{"title": "x", "image": gray.copy()}]).fingerprint() == before
    gray.putpixel((0, 0), 0)
    assert ItemCatalog.from_records([{"title": "x", "image": gray}]).fingerprint() != before
    assert ItemCatalog.from_records([{"title": "x"}]).fingerprint() != before
    assert not ItemCatalog.from_records([{"title": "x"}]).has_images


def test_from_records_ids_and_levels():
    cat = ItemCatalog.from_records([{"item_id": 10, "title": "a", "likes_level": 3, "views_level": 1},
                                    {"item_id": 4, "title": "b", "likes_level": 0, "views_level": 9}])
    assert cat.item_ids.tolist() == [10, 4]
    assert cat.likes_level.tolist() == [3, 0] and cat.views_level.tolist() == [1, 9]


def test_from_records_rejects_bad_input():
    with pytest.raises(ValueError, match=r"record 0: unknown keys \['titel'\]; valid keys: "):
        ItemCatalog.from_records([{"titel": "x"}])
    with pytest.raises(TypeError, match="record 1: expected a dict, got str"):
        ItemCatalog.from_records([{"title": "x"}, "y"])
    with pytest.raises(TypeError, match="record 0: 'title' must be a str or None, got int"):
        ItemCatalog.from_records([{"title": 3}])
    with pytest.raises(ValueError, match="record 0: 6 tags, at most 5 allowed"):
        ItemCatalog.from_records([{"title": "x", "tags": [1, 2, 3, 4, 5, 6]}])
    with pytest.raises(TypeError, match=r"record 0: 'tags' must be integers, got \['a'\]"):
        ItemCatalog.from_records([{"title": "x", "tags": ["a"]}])
    with pytest.raises(ValueError, match=r"record 0: tag ids must be >= 0, got \[-1\]"):
        ItemCatalog.from_records([{"title": "x", "tags": [-1]}])
    with pytest.raises(TypeError, match="record 0: 'image' must be a path \\(str or Path\\), a "
                                        "PIL.Image.Image or None, got bytes"):
        ItemCatalog.from_records([{"title": "x", "image": b"raw"}])
    with pytest.raises(DatasetError, match="records: item_id 2 appears more than once"):
        ItemCatalog.from_records([{"item_id": 2, "title": "a"}, {"item_id": 2, "title": "b"}])
    with pytest.raises(TypeError, match="record 0: 'item_id' must be an integer, got str"):
        ItemCatalog.from_records([{"item_id": "7", "title": "a"}])
    with pytest.raises(ValueError, match="give 'item_id' in every record or in none"):
        ItemCatalog.from_records([{"item_id": 2, "title": "a"}, {"title": "b"}])
    with pytest.raises(ValueError, match="'likes_level' given in 1 of 2 records"):
        ItemCatalog.from_records([{"title": "a", "likes_level": 1}, {"title": "b"}])
    assert len(ItemCatalog.from_records([])) == 0
