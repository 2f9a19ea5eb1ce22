"""mmembed.extract end to end on the tiny synthetic set, ItemEmbeddings and item_info."""
from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.api import ItemEmbeddings, check_item_info, extract, format_spec, parse_spec, write_item_info
from mmembed.cache import encode_cached
from mmembed.datasets import ItemCatalog, validate_dataset
from mmembed.encoders import create_encoder
from mmembed.fusion.concat_pca import ConcatPCA

from _tiny_models import tiny_clip_spec

TINY_CLIP = tiny_clip_spec()
ENCODERS = ["sbert", TINY_CLIP]


@pytest.fixture(scope="module")
def extracted(tiny_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("feature-cache")
    emb = extract(tiny_root, encoders=ENCODERS, fusion="concat_pca", dim=128,
                  cache_dir=cache, progress=False, num_workers=0)
    return emb, cache


def test_extract_shapes_provenance_and_fusion(extracted, tiny_root):
    emb, cache = extracted
    catalog = ItemCatalog.from_dir(tiny_root)
    n = len(catalog)
    np.testing.assert_array_equal(emb.ids, catalog.item_ids)
    assert emb.ids.dtype == np.int64 and emb.vectors.shape == (n, 128) and emb.vectors.dtype == np.float32
    assert np.isfinite(emb.vectors).all()
    assert set(emb.valid) == {"sbert", "clip"} and all(m.shape == (n,) for m in emb.valid.values())

    prov = emb.provenance
    assert prov["data"] == {"source": str(tiny_root.resolve()), "fingerprint": catalog.fingerprint(), "n_items": n}
    by_name = {e["name"]: e for e in prov["encoders"]}
    assert by_name["clip"]["untrained"] is True and by_name["clip"]["weights_id"] == "random-init:0"
    assert by_name["sbert"]["untrained"] is False and by_name["sbert"]["dim"] == 384
    assert by_name["clip"]["config"]["model"] == TINY_CLIP["model"] and by_name["clip"]["dim"] == 32
    assert prov["fusion"]["name"] == "concat_pca" and prov["fusion"]["params"] == ConcatPCA(dim=128).get_params()
    assert prov["untrained"] is True and emb.untrained and prov["dim"] == 128
    assert prov["mmembed_version"] and prov["created"].endswith("Z")

    # The same numbers as the head on the (cached) features ...
    feats = {spec if isinstance(spec, str) else spec["name"]:
             encode_cached(create_encoder(spec), catalog, cache_dir=cache, progress=False)
             for spec in ENCODERS}
    assert all(f.info["cache"]["hit"] for f in feats.values())
    np.testing.assert_array_equal(emb.vectors, ConcatPCA(dim=128).fit_transform(feats))
    np.testing.assert_array_equal(emb.valid["clip"], feats["clip"].valid)
    # ... and those features are what the encoders give when run by hand (on a sample).
    sample = np.arange(0, n, 9)
    for spec in ENCODERS:
        name = spec if isinstance(spec, str) else spec["name"]
        direct = create_encoder(spec).encode(catalog.subset(sample), progress=False, num_workers=0)
        np.testing.assert_allclose(feats[name].vectors[sample], direct.vectors, atol=1e-5)
        np.testing.assert_array_equal(feats[name].valid[sample], direct.valid)


def test_repr_summarises_and_names_random_weights(extracted, tiny_root):
    emb, _ = extracted
    text = repr(emb)
    assert text == (f"ItemEmbeddings({len(emb)} items x 128; encoders sbert, clip (RANDOM weights); "
                    f"fusion concat_pca; from {emb.source_dir})")
    assert "array" not in text


def test_second_extract_uses_the_cache(extracted, tiny_root, monkeypatch):
    emb, cache = extracted
    from mmembed.encoders.base import Encoder

    def refuse(*args, **kwargs):
        raise AssertionError("an encoder ran although its features are cached")

    monkeypatch.setattr(Encoder, "encode", refuse)
    again = extract(tiny_root, encoders=ENCODERS, dim=128, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.vectors, emb.vectors)
    # A different fusion reuses the same features too.
    smaller = extract(tiny_root, encoders=ENCODERS, fusion={"name": "concat_pca", "normalize": False},
                      dim=8, cache_dir=cache, progress=False)
    assert smaller.vectors.shape == (len(emb), 8)


def test_save_item_info_is_accepted_by_the_validator(extracted, tiny_copy, tiny_root, caplog):
    emb, _ = extracted
    target = tiny_copy / "MicroLens_1M_x1" / "item_info.parquet"
    original = pq.read_table(target).to_pydict()
    with caplog.at_level(logging.WARNING, logger="mmembed.api"):
        emb.save_item_info(target)
    assert "UNTRAINED (random-init)" in caplog.text and "'clip'" in caplog.text
    report = validate_dataset(tiny_copy)
    assert report.ok, report.format()

    written = pq.read_table(target)
    assert str(written.schema.field("item_id").type) == "int64"
    assert str(written.schema.field("item_tags").type) == "list<element: int64>"
    assert str(written.schema.field("item_emb_d128").type) == "list<element: float>"
    data = written.to_pydict()
    n = len(emb)
    assert data["item_id"] == list(range(n + 1))
    assert data["item_tags"] == original["item_tags"]  # carried over from the source
    vectors = np.array(data["item_emb_d128"], dtype=np.float32)
    assert not vectors[0].any()
    np.testing.assert_array_equal(vectors[emb.ids], emb.vectors)


def test_save_load_round_trip(extracted, tmp_path):
    emb, _ = extracted
    emb.save(tmp_path / "emb")
    assert (tmp_path / "emb" / "provenance.json").is_file()
    loaded = ItemEmbeddings.load(tmp_path / "emb")
    np.testing.assert_array_equal(loaded.ids, emb.ids)
    np.testing.assert_array_equal(loaded.vectors, emb.vectors)
    np.testing.assert_array_equal(loaded.tags, emb.tags)
    assert loaded.provenance == emb.provenance and loaded.source_dir == emb.source_dir
    assert loaded.valid.keys() == emb.valid.keys()
    for key in emb.valid:
        np.testing.assert_array_equal(loaded.valid[key], emb.valid[key])
    with pytest.raises(FileNotFoundError, match=r"embeddings\.npz not found"):
        ItemEmbeddings.load(tmp_path / "nothing")


RECORDS = [
    {"title": "red running shoes", "tags": [3, 4]},
    {"title": "a cat sleeping on a sofa", "tags": [7]},
    {"title": "", "tags": [1]},
    {"title": "guitar lesson for beginners", "tags": [2, 9, 11]},
    {"title": "street food tour at night"},
    {"title": "how to fold a paper crane", "tags": [5]},
]


def test_list_of_dicts_with_sbert_only(tmp_path):
    emb = extract(RECORDS, encoders=create_encoder("sbert"), dim=4, cache_dir=tmp_path / "c", progress=False)
    assert emb.ids.tolist() == [1, 2, 3, 4, 5, 6] and emb.vectors.shape == (6, 4)
    assert emb.valid["sbert"].tolist() == [True, True, False, True, True, True]
    assert emb.provenance["data"]["source"] == "records (6)" and emb.source_dir is None
    assert emb.provenance["untrained"] is False


def test_item_info_from_records_takes_the_catalog_tags(tmp_path):
    emb = extract(RECORDS, encoders="sbert", fusion=None, dim=None, cache_dir=tmp_path / "c", progress=False)
    assert emb.vectors.shape == (6, 384) and emb.provenance["fusion"] is None
    with pytest.raises(ValueError, match=r"needs 128-d vectors \(item_emb_d128\), got \(6, 384\); extract with dim=128"):
        emb.save_item_info(tmp_path / "item_info.parquet")
    emb.vectors = emb.vectors[:, :128].copy()
    path = emb.save_item_info(tmp_path / "item_info.parquet")
    tags = pq.read_table(path).column("item_tags").to_pylist()
    assert tags[0] == [0] * 5 and tags[1] == [3, 4, 0, 0, 0] and tags[4] == [2, 9, 11, 0, 0]


def test_item_info_needs_ids_one_to_n(tmp_path):
    vectors = np.ones((3, 128), np.float32)
    with pytest.raises(ValueError, match=r"needs item ids exactly 1\.\.3 \(row i = item i\); these ids are not \(first offending ids: \[3, 7\]\)"):
        write_item_info(tmp_path / "x.parquet", np.array([2, 7, 1]), vectors, None)
    assert not (tmp_path / "x.parquet").exists()
    # Ids in any order are placed by id.
    path = write_item_info(tmp_path / "y.parquet", np.array([3, 1, 2]), np.arange(3 * 128, dtype=np.float32).reshape(3, 128), None)
    rows = np.array(pq.read_table(path).column("item_emb_d128").to_pylist())
    assert rows[3, 1] == 1 and rows[1, 0] == 128 and rows[2, 0] == 256


def test_check_item_info_rejects_a_nonzero_padding_row(tmp_path):
    path = write_item_info(tmp_path / "ok.parquet", np.array([1, 2]), np.ones((2, 128), np.float32), None)
    table = pq.read_table(path).to_pydict()
    table["item_emb_d128"][0] = [0.5] * 128
    import pyarrow as pa

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table(table, schema=pq.read_schema(path)), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet: row 0 must be the all-zero padding item .*found item_emb_d128 with 128 non-zero values"):
        check_item_info(bad)


def test_unknown_option_and_bad_inputs_fail_before_any_data_is_read(tmp_path):
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'batchsize'"):
        extract(missing, encoders="sbert", batchsize=3)
    with pytest.raises(TypeError, match=r"positional argument"):  # options are keyword-only
        extract(missing, "sbert", "concat_pca", 128, tmp_path / "cache")
    for bad_dim, error in ((0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match=rf"dim must be a positive integer or None, got .*{bad_dim!r}"):
            extract(missing, encoders="sbert", dim=bad_dim)
    with pytest.raises(ValueError, match=r"concat_pca: dim=500 exceeds the number of concatenated features \(384; sbert: 384\); choose dim <= 384"):
        extract(missing, encoders="sbert", dim=500)
    with pytest.raises(ValueError, match=r"unknown encoder 'sbrt'\. Did you mean 'sbert'\?"):
        extract(missing, encoders=["sbrt"])
    with pytest.raises(ValueError, match=r"unknown fusion head 'pca'"):
        extract(missing, encoders="sbert", fusion="pca")
    with pytest.raises(ValueError, match=r"fusion spec says dim=16 but extract\(\) got dim=128"):
        extract(missing, encoders="sbert", fusion={"name": "concat_pca", "dim": 16})
    with pytest.raises(ValueError, match=r"fusion=None keeps the encoders' features as they are \(384 dims in all\), but dim=128"):
        extract(missing, encoders="sbert", fusion=None)
    with pytest.raises(TypeError, match=r"data must be a dataset directory"):
        extract(42, encoders="sbert")
    with pytest.raises(FileNotFoundError, match="no-such-dataset: data directory not found"):
        extract(missing, encoders="sbert")


def test_extract_options_keep_their_defaults():
    from mmembed.cache import DEFAULT_SHARD_SIZE

    params = inspect.signature(extract).parameters
    defaults = {name: p.default for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert defaults == {"cache_dir": None, "batch_size": None, "num_workers": None, "progress": True,
                        "shard_size": DEFAULT_SHARD_SIZE, "sequences": None, "images": "auto"}
    assert (params["encoders"].default, params["fusion"].default, params["dim"].default) == (("sbert", "clip"), "concat_pca", 128)


def test_an_item_catalog_and_a_repeated_encoder(tmp_path, monkeypatch):
    catalog = ItemCatalog.from_records(RECORDS)
    expected = catalog.fingerprint()
    calls = []

    def counted(self):  # stats every image file on a real catalog: one call per extract()
        calls.append(1)
        return expected

    monkeypatch.setattr(ItemCatalog, "fingerprint", counted)
    emb = extract(catalog, encoders=["sbert", {"name": "sbert", "fields": "title+tags"}], dim=5,
                  cache_dir=tmp_path, progress=False)
    assert list(emb.valid) == ["sbert", "sbert:2"]
    # title+tags gives text to the item without a title.
    assert emb.valid["sbert:2"].all() and not emb.valid["sbert"][2]
    assert [e["label"] for e in emb.provenance["encoders"]] == ["sbert", "sbert:2"]
    assert len(calls) == 1 and emb.provenance["data"]["fingerprint"] == expected


@pytest.mark.slow
def test_two_accelerate_processes_give_the_one_process_result(tiny_root, tmp_path):
    script = tmp_path / "run_extract.py"
    script.write_text(textwrap.dedent(
        """
        import sys
        import numpy as np
        from mmembed.api import extract

        data, cache, out = sys.argv[1:4]
        emb = extract(data, encoders=["sbert"], dim=32, cache_dir=cache, shard_size=100, progress=False)
        from mmembed._distributed import current_process
        np.save(f"{out}.rank{current_process().rank}.npy", emb.vectors)
        """
    ))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), str(tiny_root), str(tmp_path / "cache2"), str(tmp_path / "two"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    single = extract(tiny_root, encoders=["sbert"], dim=32, cache_dir=tmp_path / "cache1",
                     shard_size=100, progress=False)
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"two.rank{rank}.npy"), single.vectors, atol=1e-5)


@pytest.mark.parametrize(
    "text, spec",
    [
        ("sbert", "sbert"),
        ("clip:pretrained=null,towers=image", {"name": "clip", "pretrained": None, "towers": "image"}),
        ("clip:pretrained=None,seed=3,normalize=false", {"name": "clip", "pretrained": None, "seed": 3, "normalize": False}),
        ('{"name": "bert", "layer": -2}', {"name": "bert", "layer": -2}),
    ],
)
def test_parse_spec(text, spec):
    assert parse_spec(text) == spec


@pytest.mark.parametrize(
    "spec",
    [
        "sbert",
        {"name": "sbert"},
        {"name": "clip", "model": "ViT-S-32", "towers": "image", "pretrained": None},
        {"name": "clip", "seed": 3, "normalize": False, "pretrained": "3"},
        {"name": "bert", "model": "local-dir:/models/a,b", "layer": -2},  # a comma: JSON form
    ],
)
def test_format_spec_is_read_back_by_parse_spec(spec):
    text = format_spec(spec)
    assert parse_spec(text) == (spec["name"] if spec == {"name": "sbert"} else spec)
    if isinstance(spec, dict) and "towers" in spec:
        assert text == "clip:model=ViT-S-32,towers=image,pretrained=None"


def test_parse_spec_errors():
    with pytest.raises(ValueError, match=r"'towers' is not key=value"):
        parse_spec("clip:towers")
    with pytest.raises(ValueError, match=r"a JSON spec must be an object with a 'name'"):
        parse_spec('{"model": "x"}')


def test_item_info_tags_fall_back_to_the_catalog_when_the_source_has_no_item_info(tiny_copy, tmp_path):
    catalog = ItemCatalog.from_dir(tiny_copy)
    (tiny_copy / "MicroLens_1M_x1" / "item_info.parquet").unlink()
    n = len(catalog)
    vectors = np.random.default_rng(0).normal(size=(n, 128)).astype(np.float32)
    emb = ItemEmbeddings(ids=catalog.item_ids, vectors=vectors, provenance={}, tags=catalog.tags,
                         source_dir=tiny_copy)
    path = emb.save_item_info(tmp_path / "item_info.parquet")
    tags = np.array(pq.read_table(path).column("item_tags").to_pylist())
    np.testing.assert_array_equal(tags[catalog.item_ids], catalog.tags)
    with pytest.raises(FileNotFoundError, match=r"item_info\.parquet: file not found"):
        emb.save_item_info(tmp_path / "other.parquet", like=tiny_copy)


def test_a_head_with_codes_writes_item_codes_beside_item_info(extracted, tiny_root, tmp_path):
    from ctr_eval.format import read_item_codes

    _, cache = extracted
    emb = extract(tiny_root, encoders=["sbert"], fusion={"name": "rq", "levels": 2, "codes": 8}, dim=128,
                  cache_dir=cache, progress=False, num_workers=0)
    assert emb.codes.shape == (len(emb), 2) and emb.codes.max() < 8
    diagnostics = emb.provenance["fusion"]["diagnostics"]
    assert diagnostics["levels"] == 2 and 0 <= diagnostics["collision_rate"] <= 1
    emb.save_item_info(tmp_path / "out" / "item_info.parquet")
    by_id = read_item_codes(tmp_path / "out" / "item_codes.parquet", len(emb) + 1)
    assert (by_id[0] == -1).all()
    np.testing.assert_array_equal(by_id[emb.ids], emb.codes)  # keyed by item id, row i = item i
    emb.save(tmp_path / "saved")
    np.testing.assert_array_equal(ItemEmbeddings.load(tmp_path / "saved").codes, emb.codes)
    plain, _ = extracted
    assert plain.codes is None and plain.provenance["fusion"]["diagnostics"] == {}
