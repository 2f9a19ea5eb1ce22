"""sbert_tuned: MiniLM's top layer fine-tuned on train-history co-clicks."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.cache import encode_cached
from mmembed.datasets import ItemCatalog
from mmembed.encoders import create_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"name": "sbert_tuned", "steps": 40, "pairs_per_step": 32}


def _encode(root, **options):
    encoder = create_encoder({**SPEC, "data": str(root), **options})
    catalog = ItemCatalog.from_dir(root, images=None)
    return encoder, encoder.encode(catalog, progress=False, num_workers=0).vectors


def test_tuning_lowers_the_loss_changes_the_vectors_and_is_seeded(tiny_root):
    encoder, tuned = _encode(tiny_root)
    assert encoder.history_[-1] < encoder.history_[0]
    catalog = ItemCatalog.from_dir(tiny_root, images=None)
    plain = create_encoder("sbert").encode(catalog, progress=False, num_workers=0).vectors
    assert tuned.shape == plain.shape and not np.allclose(tuned, plain, atol=1e-3)
    _, again = _encode(tiny_root)
    np.testing.assert_array_equal(again, tuned)
    _, other_seed = _encode(tiny_root, seed=1)
    assert not np.array_equal(other_seed, tuned)


def test_the_cache_key_follows_the_train_histories_not_valid_or_test(tiny_copy, tmp_path):
    short = {"steps": 5}
    encoder, tuned = _encode(tiny_copy, **short)
    catalog = ItemCatalog.from_dir(tiny_copy, images=None)
    first = encode_cached(encoder, catalog, cache_dir=tmp_path / "cache", progress=False)
    second = encode_cached(create_encoder({**SPEC, **short, "data": str(tiny_copy)}), catalog,
                           cache_dir=tmp_path / "cache", progress=False)
    assert second.info["cache"]["hit"] and not first.info["cache"]["hit"]
    np.testing.assert_array_equal(second.vectors, tuned)
    # poisoned valid and test histories: nothing it learns changes
    for split in ("valid", "test"):
        path = tiny_copy / "MicroLens_1M_x1" / f"{split}.parquet"
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index("item_seq"), "item_seq",
                                        table.column("item_seq").take(np.arange(table.num_rows)[::-1])), path)
    poisoned, vectors = _encode(tiny_copy, **short)
    assert poisoned.weights_id() == encoder.weights_id()
    np.testing.assert_array_equal(vectors, tuned)
    # other train histories: another key
    path = tiny_copy / "MicroLens_1M_x1" / "train.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows // 2), path)
    assert create_encoder({**SPEC, **short, "data": str(tiny_copy)}).weights_id() != encoder.weights_id()


def test_bad_options_are_refused_before_any_training(tmp_path):
    with pytest.raises(TypeError, match=r"sbert_tuned needs option data"):
        create_encoder({"name": "sbert_tuned"})
    with pytest.raises(ValueError, match=r"sbert_tuned option steps must be"):
        create_encoder({"name": "sbert_tuned", "data": str(tmp_path), "steps": 0})
