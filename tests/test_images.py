"""Image sources: stored RAR4 (written by tests/rar4.py), zip, folder precedence, safety."""
from __future__ import annotations

import io
import logging
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rarfile

from mmembed.datasets import DatasetError, ItemCatalog, MissingFileError, find_layout
from mmembed.datasets.images import MARKER_NAME, RarImageSource, ZipImageSource

sys.path.insert(0, str(Path(__file__).parent))
from rar4 import METHOD_NORMAL, rar4_bytes, write_rar4  # noqa: E402

N_ARCHIVED = 12  # archives hold the first few items only: fast, and the rest count as missing


def images_to_archive(root: Path, ids=range(1, N_ARCHIVED + 1)) -> dict[str, bytes]:
    return {f"item_images/{i}.jpg": (root / "item_images" / f"{i}.jpg").read_bytes() for i in ids}


def rar_dataset(tiny_copy: Path, members: dict[str, bytes] | None = None, **kwargs) -> Path:
    members = members if members is not None else images_to_archive(tiny_copy)
    shutil.rmtree(tiny_copy / "item_images")
    return write_rar4(tiny_copy / "item_images.rar", members, **kwargs)


def test_rar4_writer_is_read_by_rarfile(tmp_path):
    members = {"item_images/1.jpg": b"abc", "item_images/22.jpg": bytes(range(256)) * 3}
    path = write_rar4(tmp_path / "a.rar", members)
    with rarfile.RarFile(path, errors="strict") as archive:
        infos = archive.infolist()
        assert [i.filename for i in infos] == list(members)
        assert [i.file_size for i in infos] == [3, 768]
        assert all(i.compress_type == rarfile.RAR_M0 for i in infos)
        assert archive.read("item_images/22.jpg") == members["item_images/22.jpg"]
        archive.testrar()  # CRCs check out


def test_rar_source_extracts_once(tiny_copy, caplog):
    originals = images_to_archive(tiny_copy)
    rar = rar_dataset(tiny_copy)
    cat = ItemCatalog.from_dir(tiny_copy, progress=False)
    assert isinstance(cat.image_source, RarImageSource)
    cache = tiny_copy / ".mmembed_cache" / "item_images"
    assert not cache.exists()  # nothing happens before the first image is needed
    with caplog.at_level(logging.INFO, logger="mmembed.datasets.images"):
        image = cat.load_image(0)
    assert image.mode == "RGB" and image.size == (128, 128)
    assert cat.image_bytes(2) == originals["item_images/3.jpg"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"{i}.jpg" for i in range(1, N_ARCHIVED + 1)] + [MARKER_NAME])
    assert sum("extracting" in r.message for r in caplog.records) == 1
    marker_mtime = (cache / MARKER_NAME).stat().st_mtime_ns
    file_mtime = (cache / "1.jpg").stat().st_mtime_ns

    caplog.clear()
    again = ItemCatalog.from_dir(tiny_copy, progress=False)
    with caplog.at_level(logging.INFO, logger="mmembed.datasets.images"):
        assert again.image_bytes(0) == originals["item_images/1.jpg"]
    assert not any("extracting" in r.message for r in caplog.records)
    assert (cache / MARKER_NAME).stat().st_mtime_ns == marker_mtime
    assert (cache / "1.jpg").stat().st_mtime_ns == file_mtime

    # A changed archive (new size and mtime) is extracted again.
    members = dict(originals)
    members["item_images/1.jpg"] = originals["item_images/2.jpg"]
    write_rar4(rar, members)
    os.utime(rar, ns=(marker_mtime + 10**9, marker_mtime + 10**9))
    fresh = ItemCatalog.from_dir(tiny_copy, progress=False)
    assert fresh.image_bytes(0) == originals["item_images/2.jpg"]
    assert fresh.load_image(N_ARCHIVED) is None  # not in the archive


def test_rar_fingerprint_needs_no_extraction(tiny_copy):
    rar_dataset(tiny_copy)
    cat = ItemCatalog.from_dir(tiny_copy, progress=False)
    first = cat.fingerprint()
    assert not (tiny_copy / ".mmembed_cache").exists()
    assert ItemCatalog.from_dir(tiny_copy, progress=False).fingerprint() == first


def test_rar_pickled_catalog_reads_images(tiny_copy):
    rar_dataset(tiny_copy)
    cat = ItemCatalog.from_dir(tiny_copy, progress=False)
    cat.prepare_images()
    clone = pickle.loads(pickle.dumps(cat))
    assert np.array_equal(np.asarray(clone.load_image(4)), np.asarray(cat.load_image(4)))


@pytest.mark.parametrize("evil", ["../evil.jpg", "item_images/../../evil.jpg", "/tmp/evil.jpg"])
def test_rar_refuses_members_outside_the_folder(tiny_copy, evil):
    members = images_to_archive(tiny_copy, ids=[1, 2])
    members[evil] = b"gotcha"
    rar_dataset(tiny_copy, members)
    with pytest.raises(DatasetError, match=r"item_images\.rar: member '.*evil\.jpg' would be "
                                           r"extracted outside the image folder; refusing"):
        ItemCatalog.from_dir(tiny_copy, progress=False)
    assert not (tiny_copy / ".mmembed_cache").exists()
    assert not (tiny_copy / "evil.jpg").exists() and not (tiny_copy.parent / "evil.jpg").exists()


def test_rar_compressed_members_need_unar(tiny_copy, monkeypatch):
    # Make every RAR tool unfindable, whatever this machine has installed.
    for tool in ("UNRAR_TOOL", "UNAR_TOOL", "BSDTAR_TOOL", "SEVENZIP_TOOL", "SEVENZIP2_TOOL"):
        monkeypatch.setattr(rarfile, tool, "mmembed-test-no-such-tool")
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)
    with pytest.raises(rarfile.RarCannotExec):
        rarfile.tool_setup(force=True)
    monkeypatch.setattr(rarfile, "CURRENT_SETUP", None)
    rar_dataset(tiny_copy, images_to_archive(tiny_copy, ids=[1]), method=METHOD_NORMAL)
    with pytest.raises(DatasetError, match=r"item_images\.rar: holds compressed members and no "
                                           r"RAR decompressor was found; .*apt-get install unar"):
        ItemCatalog.from_dir(tiny_copy, progress=False)
    # Without images the catalog still loads.
    assert len(ItemCatalog.from_dir(tiny_copy, images=None)) == 600


def test_rar_corrupt_archive(tiny_copy):
    rar = rar_dataset(tiny_copy)
    data = rar.read_bytes()
    rar.write_bytes(data[:200])
    with pytest.raises(DatasetError, match=r"item_images\.rar: not a readable RAR archive"):
        ItemCatalog.from_dir(tiny_copy, progress=False)
    rar.write_bytes(b"definitely not a rar archive")
    with pytest.raises(DatasetError, match=r"item_images\.rar: not a readable RAR archive"):
        ItemCatalog.from_dir(tiny_copy, progress=False)


def test_rar_member_with_bad_crc(tiny_copy):
    data = bytearray(rar4_bytes({"item_images/1.jpg": b"x" * 100}))
    data[-20] ^= 0xFF  # a byte inside the member's data (the end block is 7 bytes)
    shutil.rmtree(tiny_copy / "item_images")
    (tiny_copy / "item_images.rar").write_bytes(bytes(data))
    cat = ItemCatalog.from_dir(tiny_copy, progress=False)
    with pytest.raises(DatasetError, match=r"member 'item_images/1\.jpg' is corrupt"):
        cat.load_image(0)
    assert not (tiny_copy / ".mmembed_cache" / "item_images").exists()


def test_zip_source_reads_members_directly(tiny_copy):
    originals = images_to_archive(tiny_copy, ids=range(1, 601))
    folder_image = np.asarray(ItemCatalog.from_dir(tiny_copy).load_image(9))
    shutil.rmtree(tiny_copy / "item_images")
    with zipfile.ZipFile(tiny_copy / "item_images.zip", "w") as zf:
        for name, data in originals.items():
            zf.writestr(name, data)
    cat = ItemCatalog.from_dir(tiny_copy)
    assert isinstance(cat.image_source, ZipImageSource)
    assert cat.image_bytes(9) == originals["item_images/10.jpg"]
    assert np.array_equal(np.asarray(cat.load_image(9)), folder_image)
    clone = pickle.loads(pickle.dumps(cat))
    assert clone.image_bytes(599) == originals["item_images/600.jpg"]
    assert not (tiny_copy / ".mmembed_cache").exists()


_INHERITED: dict = {}  # a catalog that forked workers inherit instead of unpickling


def _read_in_worker(args):
    catalog, positions = args
    catalog = _INHERITED["catalog"] if catalog is None else catalog
    return [catalog.image_bytes(p) for p in positions]


@pytest.mark.skipif(sys.platform == "win32", reason="uses the fork start method")
def test_zip_catalog_in_worker_processes(tiny_copy):
    import multiprocessing

    originals = images_to_archive(tiny_copy, ids=range(1, 41))
    shutil.rmtree(tiny_copy / "item_images")
    with zipfile.ZipFile(tiny_copy / "item_images.zip", "w") as zf:
        for name, data in originals.items():
            zf.writestr(name, data)
    cat = ItemCatalog.from_dir(tiny_copy)
    assert cat.image_bytes(0) == originals["item_images/1.jpg"]  # parent's handle is open
    _INHERITED["catalog"] = cat  # forked workers share the parent's open zip handle object
    jobs = [(None, range(0, 20)), (cat.subset(np.arange(20, 40)), range(0, 20))]
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_read_in_worker, jobs, chunksize=1)
    finally:
        _INHERITED.clear()
    assert results[0] + results[1] == [originals[f"item_images/{i}.jpg"] for i in range(1, 41)]


def test_zip_corrupt(tiny_copy):
    shutil.rmtree(tiny_copy / "item_images")
    (tiny_copy / "item_images.zip").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DatasetError, match=r"item_images\.zip: not a readable zip archive"):
        ItemCatalog.from_dir(tiny_copy)


def test_source_precedence_and_explicit_path(tiny_copy):
    with zipfile.ZipFile(tiny_copy / "item_images.zip", "w") as zf:
        zf.writestr("item_images/1.jpg", (tiny_copy / "item_images" / "1.jpg").read_bytes())
    write_rar4(tiny_copy / "item_images.rar", images_to_archive(tiny_copy, ids=[1]))
    layout = find_layout(tiny_copy)
    assert layout.image_source == tiny_copy.resolve() / "item_images"
    assert ItemCatalog.from_dir(tiny_copy).image_source.kind == "folder"
    explicit = ItemCatalog.from_dir(tiny_copy, images=tiny_copy / "item_images.zip")
    assert explicit.image_source.kind == "zip"
    with pytest.raises(MissingFileError, match="image source not found"):
        ItemCatalog.from_dir(tiny_copy, images=tiny_copy / "nope.zip")
    (tiny_copy / "covers.tar").write_bytes(b"")
    with pytest.raises(DatasetError, match="unsupported image source"):
        ItemCatalog.from_dir(tiny_copy, images=tiny_copy / "covers.tar")


def test_rar_valid_cache_skips_parsing_the_archive(tiny_copy, monkeypatch):
    originals = images_to_archive(tiny_copy)
    rar_dataset(tiny_copy)
    first = ItemCatalog.from_dir(tiny_copy, progress=False)
    fingerprint = first.fingerprint()
    first.prepare_images()

    def no_parsing(*args, **kwargs):
        raise AssertionError("the archive was parsed again")

    monkeypatch.setattr(rarfile, "RarFile", no_parsing)
    again = ItemCatalog.from_dir(tiny_copy, progress=False)
    assert again.fingerprint() == fingerprint
    assert again.image_bytes(4) == originals["item_images/5.jpg"]
    monkeypatch.undo()
    # The cache vanishing after the source was made (from the marker): the archive is
    # parsed and extracted again on next access.
    stale = ItemCatalog.from_dir(tiny_copy, progress=False)
    shutil.rmtree(tiny_copy / ".mmembed_cache")
    assert stale.image_bytes(4) == originals["item_images/5.jpg"]
    assert (tiny_copy / ".mmembed_cache" / "item_images" / MARKER_NAME).is_file()


def test_summary_and_validator_with_a_rar(tiny_copy):
    from mmembed.datasets import format_summary, summarize, validate_dataset

    rar_dataset(tiny_copy)
    summary = summarize(tiny_copy)
    assert summary["images"]["kind"] == "rar" and summary["images"]["count"] == N_ARCHIVED
    assert summary["images"]["example_size"] is None  # summarize never extracts
    assert "images (rar): 12 files, size unknown (archive not extracted yet)" in format_summary(summary)
    report = validate_dataset(tiny_copy, progress=False)
    stats = report.image_stats
    assert report.ok and stats.source == "item_images.rar"
    assert (stats.checked, stats.missing, stats.undecodable) == (600, 600 - N_ARCHIVED, 0)
    assert stats.missing_ids == [13, 14, 15, 16, 17]
    assert summarize(tiny_copy)["images"]["example_size"] == [128, 128]  # extracted by now


# ---- what counts as a usable cover: one decision for extraction and validation -----------

def oversized_jpeg(side: int = 12_000) -> bytes:
    """A valid few-hundred-byte JPEG whose SOF0 header then claims side x side pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def test_truncated_jpeg_is_undecodable_in_full_and_reduced_decodes(tiny_copy):
    from mmembed.datasets.covers import OK, UNDECODABLE, decode_cover

    cover = tiny_copy / "item_images" / "4.jpg"
    data = cover.read_bytes()
    image, status = decode_cover(data)
    assert status == OK and image.size == (128, 128)
    small, status = decode_cover(data, reduced=True)
    assert status == OK and small.size == (16, 16)  # JPEG decoded at 1/8 scale
    for cut in (len(data) // 2, len(data) - 8):
        assert decode_cover(data[:cut]) == (None, UNDECODABLE)
        assert decode_cover(data[:cut], reduced=True) == (None, UNDECODABLE)
    cover.write_bytes(data[:len(data) // 2])
    assert ItemCatalog.from_dir(tiny_copy).load_image(3) is None


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # expected
def test_oversized_cover_is_refused_from_its_header(tiny_copy, monkeypatch):
    from PIL import Image, ImageFile

    from mmembed.datasets.covers import MAX_COVER_PIXELS, TOO_LARGE, decode_cover

    data = oversized_jpeg()
    assert len(data) < 1000 and 12_000 ** 2 > MAX_COVER_PIXELS
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (12_000, 12_000)

    def no_decoding(self):
        raise AssertionError("an oversized cover was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert decode_cover(data) == (None, TOO_LARGE)
    assert decode_cover(data, reduced=True) == (None, TOO_LARGE)
    (tiny_copy / "item_images" / "6.jpg").write_bytes(data)
    assert ItemCatalog.from_dir(tiny_copy).load_image(5) is None


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # expected
def test_classify_covers_by_reason(tiny_copy):
    from mmembed.datasets.covers import classify_covers
    from mmembed.datasets.images import FolderImageSource

    images = tiny_copy / "item_images"
    (images / "2.jpg").unlink()
    (images / "3.jpg").write_bytes(b"")
    (images / "4.jpg").write_bytes((images / "4.jpg").read_bytes()[:900])
    (images / "5.jpg").write_bytes(oversized_jpeg())
    found = classify_covers(FolderImageSource(images), np.arange(1, 9))
    assert found == {"missing": [2], "empty": [3], "undecodable": [4], "too large": [5]}
