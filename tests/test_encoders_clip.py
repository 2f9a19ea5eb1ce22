"""The open_clip encoder on a tiny random-init config (no weights can be fetched here)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from mmembed.datasets import ItemCatalog
from mmembed.encoders import create_encoder
from mmembed.weights import WeightsNotAvailable

from _tiny_models import TINY_CLIP, tiny_clip_spec

def image_records(tmp_path, n=6):
    """Records with covers of different sizes; item 3 has no cover, item 5 a corrupt file."""
    rng = np.random.RandomState(0)
    records = []
    for i in range(n):
        image = Image.fromarray(rng.randint(0, 255, (24 + 6 * i, 40, 3), dtype=np.uint8))
        path = tmp_path / f"{i + 1}.jpg"
        image.save(path)
        records.append({"title": f"video title number {i}" if i != 1 else "", "tags": [i + 1], "image": str(path)})
    records[2]["image"] = None
    (tmp_path / "5.jpg").write_bytes(b"not a jpeg at all")
    return records


@pytest.fixture
def catalog(tmp_path):
    return ItemCatalog.from_records(image_records(tmp_path))


def _direct(encoder, catalog):
    """What open_clip itself computes for the same inputs."""
    import torch

    model, preprocess, tokenizer = encoder.load()._model
    with torch.inference_mode():
        images = {p: catalog.load_image(p) for p in range(len(catalog))}
        ok = [p for p, im in images.items() if im is not None]
        img = model.encode_image(torch.stack([preprocess(images[p]) for p in ok]), normalize=True).numpy()
        txt_pos = [p for p in range(len(catalog)) if catalog.titles[p]]
        txt = model.encode_text(tokenizer([catalog.titles[p] for p in txt_pos]), normalize=True).numpy()
    return ok, img, txt_pos, txt


def test_random_init_is_loud_and_recorded(catalog, caplog):
    with caplog.at_level(logging.WARNING, logger="mmembed.encoders.clip"):
        enc = create_encoder(tiny_clip_spec())
    assert "RANDOM INIT" in caplog.text
    assert enc.is_random_init and enc.weights_id() == "random-init:0"
    feats = enc.encode(catalog, progress=False, num_workers=0)
    assert feats.info["untrained"] is True
    assert feats.info["weights_id"] == "random-init:0"


def test_towers_match_open_clip_directly(catalog):
    enc = create_encoder(tiny_clip_spec())
    assert enc.dim == 32
    feats = enc.encode(catalog, batch_size=4, progress=False, num_workers=0)
    ok, img, txt_pos, txt = _direct(enc, catalog)
    assert ok == [0, 1, 3, 5] and txt_pos == [0, 2, 3, 4, 5]
    both = sorted(set(ok) & set(txt_pos))
    assert feats.valid.tolist() == [p in both for p in range(6)]
    np.testing.assert_allclose(feats.vectors[both, :16], img[[ok.index(p) for p in both]], atol=1e-5)
    np.testing.assert_allclose(feats.vectors[both, 16:], txt[[txt_pos.index(p) for p in both]], atol=1e-5)
    assert not feats.vectors[~feats.valid].any()
    assert feats.info["n_items_with_image"] == 4 and feats.info["n_items_with_text"] == 5

    image_only = create_encoder(tiny_clip_spec(towers="image")).encode(catalog, progress=False, num_workers=0)
    assert image_only.vectors.shape == (6, 16)
    assert image_only.valid.tolist() == [True, True, False, True, False, True]
    np.testing.assert_allclose(image_only.vectors[ok], img, atol=1e-5)

    text_only = create_encoder(tiny_clip_spec(towers="text")).encode(catalog, progress=False)
    np.testing.assert_allclose(text_only.vectors[txt_pos], txt, atol=1e-5)


def test_require_any_keeps_items_with_one_modality(catalog):
    feats = create_encoder(tiny_clip_spec(require="any")).encode(catalog, progress=False, num_workers=0)
    assert feats.valid.tolist() == [True, True, True, True, True, True]
    assert not feats.vectors[1, 16:].any() and feats.vectors[1, :16].any()   # no title
    assert not feats.vectors[2, :16].any() and feats.vectors[2, 16:].any()   # no cover


def test_worker_processes_give_the_same_vectors(catalog):
    enc = create_encoder(tiny_clip_spec(towers="image"))
    in_process = enc.encode(catalog, batch_size=2, progress=False, num_workers=0)
    workers = enc.encode(catalog, batch_size=2, progress=False, num_workers=2)
    np.testing.assert_array_equal(in_process.valid, workers.valid)
    np.testing.assert_allclose(in_process.vectors, workers.vectors, atol=1e-6)


def test_seed_and_checkpoint_file(catalog, tmp_path):
    import torch

    seed0 = create_encoder(tiny_clip_spec(towers="text"))
    seed1 = create_encoder(tiny_clip_spec(towers="text", seed=1))
    v0 = seed0.encode(catalog, progress=False).vectors
    assert np.abs(v0 - seed1.encode(catalog, progress=False).vectors).max() > 1e-3
    # the same weights saved to a file and given as pretrained=path: same vectors, not random
    ckpt = tmp_path / "tiny.pt"
    torch.save(seed0._model[0].state_dict(), ckpt)
    loaded = create_encoder(tiny_clip_spec(towers="text", pretrained=str(ckpt)))
    assert not loaded.is_random_init and loaded.weights_id().startswith(f"{ckpt.resolve()}#")
    np.testing.assert_allclose(loaded.encode(catalog, progress=False).vectors, v0, atol=1e-6)


def test_default_tag_offline_error_names_model_and_fetch(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailable) as info:
        create_encoder("clip")
    message = str(info.value)
    assert "ViT-B-32 pretrained=laion2b_s34b_b79k" in message
    assert "hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_pytorch_model.bin" in message
    assert "open_clip.create_model('ViT-B-32', pretrained='laion2b_s34b_b79k')" in message


def test_default_tag_found_in_hf_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    commit = "a" * 40
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_model.safetensors").write_bytes(b"0" * 8)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    enc = create_encoder("clip", local_files_only=True)
    assert not enc.is_random_init and enc.dim == 1024 and not enc.is_loaded
    assert enc.weights_id().startswith(str(repo / "snapshots" / commit / "open_clip_model.safetensors"))


def test_clip_option_errors():
    with pytest.raises(ValueError, match=r"pretrained='no-such-tag' is neither a known tag for 'ViT-B-32' \(known tags: \["):
        create_encoder("clip", pretrained="no-such-tag")
    with pytest.raises(ValueError, match=r"model='ViT-B-33' is not an open_clip model; did you mean \["):
        create_encoder("clip", model="ViT-B-33", pretrained=None)
    with pytest.raises(ValueError, match="towers must be 'image', 'text' or 'both', got 'audio'"):
        create_encoder(tiny_clip_spec(towers="audio"))
    with pytest.raises(ValueError, match=r"config dict lacks \['text_cfg'\]"):
        create_encoder({"name": "clip", "model": {"embed_dim": 8, "vision_cfg": {}}, "pretrained": None})


def test_low_precision_runs_and_stays_close(catalog):
    fp32 = create_encoder(tiny_clip_spec()).encode(catalog, progress=False, num_workers=0)
    bf16 = create_encoder(tiny_clip_spec(precision="bf16")).encode(catalog, progress=False, num_workers=0)
    assert bf16.vectors.dtype == np.float32
    np.testing.assert_array_equal(bf16.valid, fp32.valid)
    np.testing.assert_allclose(bf16.vectors, fp32.vectors, atol=0.05)


def test_local_dir_model_folder(catalog, tmp_path):
    import torch

    reference = create_encoder(tiny_clip_spec(towers="text"))
    expected = reference.encode(catalog, progress=False).vectors
    folder = tmp_path / "tiny_clip_folder"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        __import__("json").dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}})
    )
    with pytest.raises(WeightsNotAvailable, match="has open_clip_config.json but no checkpoint"):
        create_encoder({"name": "clip", "model": f"local-dir:{folder}", "towers": "text"})
    torch.save(reference._model[0].state_dict(), folder / "open_clip_pytorch_model.bin")
    enc = create_encoder({"name": "clip", "model": f"local-dir:{folder}", "towers": "text"})
    assert not enc.is_random_init and enc.dim == 16
    np.testing.assert_allclose(enc.encode(catalog, progress=False).vectors, expected, atol=1e-6)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # expected
def test_warning_names_the_lacking_input_and_why(tmp_path, caplog):
    from test_images import oversized_jpeg

    records = image_records(tmp_path, n=8)  # 3: no cover, 5: not a jpeg, 2: no title
    (tmp_path / "7.jpg").write_bytes(b"")
    (tmp_path / "8.jpg").write_bytes(oversized_jpeg())
    records[6]["image"], records[7]["image"] = str(tmp_path / "7.jpg"), str(tmp_path / "8.jpg")
    catalog = ItemCatalog.from_records(records)

    def warning(**options) -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mmembed.encoders"):
            create_encoder(tiny_clip_spec(**options)).encode(catalog, progress=False, num_workers=0)
        lines = [r.getMessage() for r in caplog.records if "valid=False" in r.getMessage()]
        assert len(lines) == 1 and "image+text" not in lines[0]
        return lines[0]

    assert warning(towers="image").startswith(
        "clip: 4 of 8 items lack a usable cover image (1 missing, 1 empty, 1 undecodable, "
        "1 too large (over 40,000,000 pixels)); their rows are zeros and valid=False "
        "(first item ids: [3, 5, 7, 8])")
    assert warning(towers="text").startswith("clip: 1 of 8 items lack a title; their rows")
    assert warning().startswith(
        "clip: 5 of 8 items lack a usable cover image or a title (covers: 1 missing, 1 empty, "
        "1 undecodable, 1 too large (over 40,000,000 pixels); titles: 1 empty);")
    info = create_encoder(tiny_clip_spec()).encode(catalog, progress=False, num_workers=0).info
    assert {k: v for k, v in info.items() if k.startswith("n_invalid_")} == {
        "n_invalid_without_text": 1, "n_invalid_cover_missing": 1, "n_invalid_cover_empty": 1,
        "n_invalid_cover_undecodable": 1, "n_invalid_cover_too_large": 1}


def test_dict_config_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import tempfile

    from open_clip import factory

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    config = {**TINY_CLIP, "embed_dim": 12}  # a config no other test registered
    enc = create_encoder(tiny_clip_spec(model=config, towers="text"))
    assert enc.dim == 12 and enc._model_name in factory.list_models()
    assert create_encoder(tiny_clip_spec(model=config, towers="text"))._model_name == enc._model_name
    assert list(scratch.iterdir()) == []
    # open_clip is not left scanning a folder or file that was temporary
    assert not [p for p in factory._MODEL_CONFIG_PATHS if "mmembed-open-clip-" in str(p)]
