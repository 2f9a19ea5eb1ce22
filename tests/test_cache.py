"""The feature cache: hits, keys, resume after kill -9, and sharding over processes."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mmembed.cache import default_cache_dir, encode_cached, feature_key

# A stand-in encoder, written to a file so that subprocesses can run it too. Its vectors
# depend only on the title (and the salt option), so every run gives the same numbers;
# every encode call appends "<rank> <first item id> <count>" to a counter file.
STAND_IN = textwrap.dedent(
    '''
    from __future__ import annotations

    import os
    import sys
    import time
    import zlib

    import numpy as np

    from mmembed.encoders.base import Encoder


    class CountingEncoder(Encoder):
        name = "counting"
        modalities = ("text",)
        defaults = {"dim": 6, "salt": 0}
        runtime_defaults = {"delay": 0.0, "counter": None}
        loads = 0

        @property
        def dim(self):
            return self.options["dim"]

        def weights_id(self):
            return f"stand-in:{self.options['salt']}"

        def _load_model(self):
            type(self).loads += 1
            return object()

        def _encode(self, catalog, batch_size, progress, num_workers):
            if self.options["counter"]:
                with open(self.options["counter"], "a") as handle:
                    rank = os.environ.get("RANK", "0")
                    handle.write(f"{rank} {int(catalog.item_ids[0])} {len(catalog)}\\n")
            time.sleep(self.options["delay"])
            vectors = np.zeros((len(catalog), self.dim), np.float32)
            valid = np.array([bool(t) for t in catalog.titles])
            for row, title in enumerate(catalog.titles):
                if title:
                    seed = zlib.crc32(title.encode()) + self.options["salt"]
                    vectors[row] = np.random.default_rng(seed).normal(size=self.dim)
            return vectors, valid, {"n_calls": 1}


    def make_catalog(n=50):
        from mmembed.datasets import ItemCatalog

        titles = [f"item number {i}" if i % 7 else "" for i in range(1, n + 1)]
        return ItemCatalog.from_records([{"title": t, "tags": [i % 5 + 1]} for i, t in enumerate(titles)])


    if __name__ == "__main__":
        from mmembed.cache import encode_cached

        cache_dir, counter, delay, out = sys.argv[1:5]
        encoder = CountingEncoder(delay=float(delay), counter=counter)
        feats = encode_cached(encoder, make_catalog(), cache_dir=cache_dir, shard_size=10, progress=False)
        if out != "-":
            np.save(out + f".rank{os.environ.get('RANK', '0')}.npy", feats.vectors)
    '''
)


@pytest.fixture
def stand_in(tmp_path):
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    spec = importlib.util.spec_from_file_location("stand_in_encoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.path = path
    return module


def _calls(counter: Path) -> list[tuple[int, int, int]]:
    if not counter.exists():
        return []
    return [tuple(int(x) for x in line.split()) for line in counter.read_text().splitlines()]


def _shards(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("counting-*/shard-*.npz"))


def test_equal_to_uncached_and_second_call_is_a_hit(stand_in, tmp_path):
    catalog = stand_in.make_catalog()
    counter = tmp_path / "calls.txt"
    plain = stand_in.CountingEncoder().encode(catalog, progress=False)

    first = encode_cached(stand_in.CountingEncoder(counter=str(counter)), catalog,
                          cache_dir=tmp_path / "c", shard_size=16, progress=False)
    np.testing.assert_array_equal(first.vectors, plain.vectors)
    np.testing.assert_array_equal(first.valid, plain.valid)
    assert first.vectors.dtype == np.float32
    assert [c[1:] for c in _calls(counter)] == [(1, 16), (17, 16), (33, 16), (49, 2)]
    assert first.info["cache"]["hit"] is False and first.info["cache"]["computed"] == 4
    # Info over the whole catalog, as the plain encode reports it.
    for key in ("n_items", "n_valid", "n_missing", "missing_ids_head", "weights_id", "config"):
        assert first.info[key] == plain.info[key], key
    assert first.info["n_missing"] == 7 and first.info["n_calls"] == 4

    fresh = stand_in.CountingEncoder(counter=str(counter))
    loads_before = stand_in.CountingEncoder.loads
    second = encode_cached(fresh, catalog, cache_dir=tmp_path / "c", progress=False)
    assert len(_calls(counter)) == 4  # no encode call
    assert not fresh.is_loaded and stand_in.CountingEncoder.loads == loads_before
    assert second.info["cache"]["hit"] is True
    np.testing.assert_array_equal(second.vectors, plain.vectors)
    np.testing.assert_array_equal(second.valid, plain.valid)

    manifest = json.loads(next((tmp_path / "c").glob("counting-*/manifest.json")).read_text())
    assert manifest["complete"] is True and manifest["n_items"] == 50 and manifest["dim"] == 6
    assert manifest["shard_size"] == 16 and manifest["n_shards"] == 4
    assert manifest["encoder"] == {"name": "counting", "config": {"name": "counting", "dim": 6, "salt": 0},
                                   "weights_id": "stand-in:0", "untrained": False}


def test_key_changes_with_config_and_catalog(stand_in, tmp_path):
    catalog = stand_in.make_catalog()
    key, parts = feature_key(stand_in.CountingEncoder(), catalog)
    assert feature_key(stand_in.CountingEncoder(delay=1.0), catalog)[0] == key  # runtime option
    assert feature_key(stand_in.CountingEncoder(salt=1), catalog)[0] != key
    other = stand_in.make_catalog()
    other.titles[3] = "a changed title"
    assert feature_key(stand_in.CountingEncoder(), other)[0] != key
    assert parts["weights_id"] == "stand-in:0" and parts["catalog"] == catalog.fingerprint()

    counter = tmp_path / "calls.txt"
    a = encode_cached(stand_in.CountingEncoder(counter=str(counter)), catalog, cache_dir=tmp_path, progress=False)
    b = encode_cached(stand_in.CountingEncoder(salt=1, counter=str(counter)), catalog, cache_dir=tmp_path, progress=False)
    assert len(_calls(counter)) == 2 and a.info["cache"]["dir"] != b.info["cache"]["dir"]
    assert not np.array_equal(a.vectors[a.valid], b.vectors[b.valid])


def test_empty_catalog_gives_zero_rows_and_writes_nothing(stand_in, tmp_path):
    empty = stand_in.make_catalog().subset([])
    feats = encode_cached(stand_in.CountingEncoder(), empty, cache_dir=tmp_path / "c", progress=False)
    assert feats.vectors.shape == (0, 6) and feats.valid.shape == (0,)
    assert not (tmp_path / "c").exists()


def test_default_cache_dir_from_environment(stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEMBED_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    encode_cached(stand_in.CountingEncoder(), stand_in.make_catalog(), progress=False)
    assert len(list((tmp_path / "env-cache").glob("counting-*/shard-*.npz"))) == 1
    monkeypatch.delenv("MMEMBED_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mmembed" / "features"


def test_resumed_entry_keeps_its_shard_size(stand_in, tmp_path):
    catalog = stand_in.make_catalog()
    counter = tmp_path / "calls.txt"
    encode_cached(stand_in.CountingEncoder(), catalog, cache_dir=tmp_path, shard_size=10, progress=False)
    folder = next(tmp_path.glob("counting-*"))
    for shard in sorted(folder.glob("shard-*.npz"))[2:]:
        shard.unlink()
    feats = encode_cached(stand_in.CountingEncoder(counter=str(counter)), catalog,
                          cache_dir=tmp_path, shard_size=25, progress=False)
    assert [c[1:] for c in _calls(counter)] == [(21, 10), (31, 10), (41, 10)]
    np.testing.assert_array_equal(feats.vectors, stand_in.CountingEncoder().encode(catalog, progress=False).vectors)


def test_foreign_manifest_and_bad_arguments_are_refused(stand_in, tmp_path):
    catalog = stand_in.make_catalog()
    encoder = stand_in.CountingEncoder()
    encode_cached(encoder, catalog, cache_dir=tmp_path, progress=False)
    manifest = next(tmp_path.glob("counting-*/manifest.json"))
    data = json.loads(manifest.read_text())
    data["key_parts"]["catalog"] = "something else"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"belongs to another encoder config or catalog; delete .* to recompute"):
        encode_cached(encoder, catalog, cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"shard_size must be a positive integer, got 0"):
        encode_cached(encoder, catalog, cache_dir=tmp_path, shard_size=0)
    with pytest.raises(TypeError, match=r"needs a catalog with a fingerprint\(\) method"):
        encode_cached(encoder, ["a", "b"], cache_dir=tmp_path)


def test_corrupt_shard_is_reported_with_its_path(stand_in, tmp_path):
    catalog = stand_in.make_catalog()
    encode_cached(stand_in.CountingEncoder(), catalog, cache_dir=tmp_path, shard_size=10, progress=False)
    shard = sorted(tmp_path.glob("counting-*/shard-*.npz"))[1]
    shard.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=rf"cache shard {shard} is unreadable .*delete it to recompute"):
        encode_cached(stand_in.CountingEncoder(), catalog, cache_dir=tmp_path, shard_size=10, progress=False)


def test_killed_run_resumes_with_only_the_missing_shards(stand_in, tmp_path):
    cache_dir, counter = tmp_path / "cache", tmp_path / "calls.txt"
    # 50 items in 5 shards of 10, each shard taking 0.6 s: kill -9 after the first one lands.
    proc = subprocess.Popen(
        [sys.executable, str(stand_in.path), str(cache_dir), str(counter), "0.6", "-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not _shards(cache_dir) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = _shards(cache_dir)
    assert 1 <= len(done) < 5
    first_calls = _calls(counter)
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    manifest = json.loads(next(cache_dir.glob("counting-*/manifest.json")).read_text())
    assert manifest["complete"] is False

    counter2 = tmp_path / "calls2.txt"
    catalog = stand_in.make_catalog()
    resumed = encode_cached(stand_in.CountingEncoder(counter=str(counter2)), catalog,
                            cache_dir=cache_dir, shard_size=10, progress=False)
    done_starts = {int(p.name.split("-")[1]) + 1 for p in done}
    assert sorted(c[1] for c in _calls(counter2)) == sorted({1, 11, 21, 31, 41} - done_starts)
    assert len(first_calls) >= len(done)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())  # not rewritten
    plain = stand_in.CountingEncoder().encode(catalog, progress=False)
    np.testing.assert_array_equal(resumed.vectors, plain.vectors)
    np.testing.assert_array_equal(resumed.valid, plain.valid)
    assert resumed.info["cache"]["computed"] == 5 - len(done)
    assert json.loads(next(cache_dir.glob("counting-*/manifest.json")).read_text())["complete"] is True


def _accelerate_launch(script: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    # "--cpu --num_processes 2" starts a single process without MPI (accelerate 1.x);
    # "--multi_gpu" runs torchrun, which on a machine without GPUs gives two CPU processes.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(script), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_processes_split_the_shards_and_agree(stand_in, tmp_path):
    cache_dir, counter, out = tmp_path / "cache", tmp_path / "calls.txt", tmp_path / "out"
    result = _accelerate_launch(stand_in.path, str(cache_dir), str(counter), "0", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    calls = _calls(counter)
    # 5 missing shards dealt round robin: rank 0 gets shards 0, 2, 4; rank 1 gets 1, 3.
    assert sorted((rank, start) for rank, start, _ in calls) == [(0, 1), (0, 21), (0, 41), (1, 11), (1, 31)]
    plain = stand_in.CountingEncoder().encode(stand_in.make_catalog(), progress=False)
    for rank in (0, 1):
        np.testing.assert_array_equal(np.load(f"{out}.rank{rank}.npy"), plain.vectors)


def test_a_full_disk_names_the_file_and_a_rerun_completes(stand_in, tmp_path, monkeypatch):
    import errno

    import mmembed.cache as cache

    catalog = stand_in.make_catalog()
    real_write, written = cache._write_shard, []

    def fills_up(path, features, item_ids):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, features, item_ids)
        written.append(path)

    monkeypatch.setattr(cache, "_write_shard", fills_up)
    with pytest.raises(cache.CacheWriteError) as caught:
        encode_cached(stand_in.CountingEncoder(), catalog, cache_dir=tmp_path, shard_size=10, progress=False)
    folder = next(tmp_path.glob("counting-*"))
    third = folder / "shard-000000020-000000030.npz"
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(third)
    assert str(caught.value) == f"cannot write feature cache file {third}: No space left on device"
    # Only whole files are left: two shards and the (incomplete) manifest.
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *(p.name for p in written)])
    assert json.loads((folder / "manifest.json").read_text())["complete"] is False

    monkeypatch.setattr(cache, "_write_shard", real_write)
    counter = tmp_path / "calls.txt"
    feats = encode_cached(stand_in.CountingEncoder(counter=str(counter)), catalog, cache_dir=tmp_path,
                          shard_size=10, progress=False)
    assert [c[1] for c in _calls(counter)] == [21, 31, 41]
    np.testing.assert_array_equal(feats.vectors, stand_in.CountingEncoder().encode(catalog, progress=False).vectors)
    assert json.loads((folder / "manifest.json").read_text())["complete"] is True
