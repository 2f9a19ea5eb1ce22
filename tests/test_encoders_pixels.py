"""The `pixels` encoder: its feature values on hand-made images, options, invalid covers.

The generic encoder contract (shapes, order, determinism, masking, config round trip)
runs over it from tests/test_encoders_contract.py.
"""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from mmembed.datasets import ItemCatalog
from mmembed.encoders import create_encoder, encoder_info
from mmembed.encoders.pixels import WORK_SIDE, pixel_features

from test_images import oversized_jpeg

RED = (255, 0, 0)


def _encode(images, num_workers=0, **options):
    catalog = ItemCatalog.from_records([{"title": f"t{i}", "image": im} for i, im in enumerate(images)])
    return create_encoder({"name": "pixels", **options}).encode(catalog, progress=False, num_workers=num_workers)


def test_solid_red_gives_known_thumbnail_histograms_and_no_edges():
    feats = _encode([Image.new("RGB", (50, 30), RED)])
    assert feats.valid.tolist() == [True] and feats.vectors.shape == (1, 192 + 32 + 8)
    vec = feats.vectors[0]
    np.testing.assert_array_equal(vec[:192].reshape(8, 8, 3), np.broadcast_to([1.0, 0.0, 0.0], (8, 8, 3)))
    hue, sat, val, edges = vec[192:208], vec[208:216], vec[216:224], vec[224:]
    np.testing.assert_array_equal(hue, np.eye(16)[0])   # PIL hue of red is 0
    np.testing.assert_array_equal(sat, np.eye(8)[7])    # saturation 255: last bin
    np.testing.assert_array_equal(val, np.eye(8)[7])    # value 255: last bin
    np.testing.assert_array_equal(edges, np.zeros(8))   # flat image: no gradient


def test_step_edges_land_in_their_orientation_bin():
    left_right = np.zeros((WORK_SIDE, WORK_SIDE, 3), np.uint8)
    left_right[:, WORK_SIDE // 2:] = 255                  # a vertical edge: gradient along x
    top_bottom = np.ascontiguousarray(left_right.transpose(1, 0, 2))  # gradient along y
    feats = _encode([Image.fromarray(left_right), Image.fromarray(top_bottom)],
                    thumbnail=2, hsv_bins=[1, 1, 2])
    assert feats.vectors.shape == (2, 12 + 4 + 8)
    # Two columns of central differences see the full 255 step: 2 * 128 * 255 / (128^2 * 255).
    expected = 2 * WORK_SIDE / WORK_SIDE**2
    np.testing.assert_allclose(feats.vectors[0, 16:], expected * np.eye(8)[0], atol=1e-7)
    np.testing.assert_allclose(feats.vectors[1, 16:], expected * np.eye(8)[4], atol=1e-7)  # pi/2
    # Left half black, right half white: the 2x2 thumbnail and the value histogram say so.
    np.testing.assert_allclose(feats.vectors[0, :12].reshape(2, 2, 3)[:, :, 0], [[0, 1], [0, 1]])
    np.testing.assert_allclose(feats.vectors[0, 14:16], [0.5, 0.5])


def test_width_follows_the_options_and_orientation_can_be_left_out():
    image = Image.new("RGB", (20, 20), (10, 200, 30))
    feats = _encode([image], thumbnail=4, hsv_bins=[2, 3, 4], orientation_bins=0)
    assert feats.vectors.shape == (1, 3 * 16 + 9)
    # Each channel's histogram sums to one.
    np.testing.assert_allclose([feats.vectors[0, 48:50].sum(), feats.vectors[0, 50:53].sum(),
                                feats.vectors[0, 53:57].sum()], 1.0, atol=1e-6)
    assert create_encoder({"name": "pixels", "hsv_bins": (2, 3, 4)}).config()["hsv_bins"] == [2, 3, 4]


def test_deterministic_and_the_same_in_worker_processes():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + k, 60, 3), dtype=np.uint8)) for k in range(5)]
    first = _encode(images, num_workers=0)
    again = _encode(images, num_workers=0)
    in_workers = _encode(images, num_workers=1)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    np.testing.assert_array_equal(in_workers.vectors, first.vectors)
    assert first.valid.all() and len({v.tobytes() for v in first.vectors}) == 5


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # expected
def test_unusable_covers_are_invalid_zero_rows_with_reasons(tmp_path, caplog):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(good)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 255, 0)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    (tmp_path / "huge.jpg").write_bytes(oversized_jpeg())
    paths = [good, None, tmp_path / "cut.jpg", tmp_path / "empty.jpg", tmp_path / "junk.jpg", tmp_path / "huge.jpg"]
    with caplog.at_level(logging.WARNING, logger="mmembed.encoders"):
        feats = _encode([str(p) if p else None for p in paths])
    assert feats.valid.tolist() == [True, False, False, False, False, False]
    assert not feats.vectors[1:].any() and feats.vectors[0].any()
    assert {k: v for k, v in feats.info.items() if k.startswith("n_invalid_")} == {
        "n_invalid_cover_missing": 1, "n_invalid_cover_empty": 1,
        "n_invalid_cover_undecodable": 2, "n_invalid_cover_too_large": 1}
    assert any(r.getMessage().startswith("pixels: 5 of 6 items lack a usable cover image (1 missing, "
                                         "1 empty, 2 undecodable, 1 too large") for r in caplog.records)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"pixels option thumbnail must be in 1\.\.128, got 0"):
        create_encoder({"name": "pixels", "thumbnail": 0})
    with pytest.raises(TypeError, match="pixels option thumbnail must be an int, got '8'"):
        create_encoder({"name": "pixels", "thumbnail": "8"})
    with pytest.raises(TypeError, match=r"hsv_bins must be a list of 3 ints .* got 8"):
        create_encoder({"name": "pixels", "hsv_bins": 8})
    with pytest.raises(ValueError, match=r"hsv_bins must have 3 entries .* got 2: \[4, 4\]"):
        create_encoder({"name": "pixels", "hsv_bins": [4, 4]})
    with pytest.raises(ValueError, match=r"hsv_bins \(value\) must be in 1\.\.256, got 300"):
        create_encoder({"name": "pixels", "hsv_bins": [4, 4, 300]})
    with pytest.raises(TypeError, match="orientation_bins must be an int, got True"):
        create_encoder({"name": "pixels", "orientation_bins": True})
    with pytest.raises(ValueError, match=r"orientation_bins must be in 0\.\.180, got -1"):
        create_encoder({"name": "pixels", "orientation_bins": -1})
    with pytest.raises(TypeError, match="pixel_features needs a PIL image, got ndarray"):
        pixel_features(np.zeros((4, 4, 3)))


def test_labelled_as_weight_free_not_random_init():
    info = encoder_info("pixels")
    assert info["summary"].startswith("Classical pixel features, no learned weights")
    assert info["random_init"] is False and info["weights_id"] == "no-weights:pixels-v1"
    assert info["modalities"] == ["image"]
    feats = _encode([Image.new("RGB", (8, 8), RED)])
    assert feats.info["untrained"] is False
    assert feats.info["features"] == "classical pixel features, no learned weights"
