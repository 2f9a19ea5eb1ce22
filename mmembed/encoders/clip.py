"""open_clip image and/or text towers over item covers and titles.

towers="both" (default) returns [image | text] concatenated, each tower L2-normalised
(when normalize=True), so dim = 2 * embed_dim. An item is valid when it has what the
towers need: with require="all" (default) both a decodable cover and a non-empty title;
with require="any" either one (the missing tower's block is zeros).

Weights: ``pretrained`` is an open_clip tag (default "laion2b_s34b_b79k" for ViT-B-32),
a checkpoint file path, or None for random init. Random init is logged as a WARNING and
recorded (is_random_init, weights_id "random-init:<seed>", info["untrained"]).
``model`` is a built-in open_clip name, a dict model config (embed_dim, vision_cfg,
text_cfg; handy for tiny test models), or "hf-hub:org/repo" / "local-dir:PATH" (then the
weights come from that folder and ``pretrained`` is ignored).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.covers import (COVER_PROBLEMS, MAX_COVER_PIXELS, MISSING, TOO_LARGE,
                               UNDECODABLE, classify_covers)
from ..weights import ResolvedWeights, WeightsNotAvailable, resolve_hub_file, resolve_model
from . import register_encoder
from ._images import collate_tensors, default_num_workers, iterate_image_batches
from .base import Encoder, batched_positions, compose_texts, progress_bar

logger = logging.getLogger(__name__)

@register_encoder("clip")
class ClipEncoder(Encoder):
    """open_clip image (cover) and/or text (title) embeddings."""

    modalities = ("image", "text")
    defaults = {
        "model": "ViT-B-32",
        "pretrained": "laion2b_s34b_b79k",
        "towers": "both",           # "image" | "text" | "both" (concatenated)
        "require": "all",           # with towers="both": valid needs "all" or "any" input
        "fields": "title",          # text tower input: "title" | "title+tags"
        "normalize": True,          # L2-normalise each tower's output
        "precision": "fp32",        # open_clip precision: "fp32", "bf16", "fp16", "amp"...
        "seed": 0,                  # random init only (pretrained=None)
    }
    runtime_defaults = {"device": None, "local_files_only": None}
    default_batch_size = 64

    # ---- options and weights --------------------------------------------------------
    def _check_options(self) -> None:
        opts = self.options
        if opts["towers"] not in ("image", "text", "both"):
            raise ValueError(f"clip option towers must be 'image', 'text' or 'both', got {opts['towers']!r}")
        if opts["require"] not in ("all", "any"):
            raise ValueError(f"clip option require must be 'all' or 'any', got {opts['require']!r}")
        if opts["fields"] not in ("title", "title+tags"):
            raise ValueError(f"clip option fields must be 'title' or 'title+tags', got {opts['fields']!r}")
        if not isinstance(opts["normalize"], bool):
            raise TypeError(f"clip option normalize must be a bool, got {opts['normalize']!r}")
        if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int):
            raise TypeError(f"clip option seed must be an int, got {opts['seed']!r}")
        if opts["pretrained"] is not None and not isinstance(opts["pretrained"], str):
            raise TypeError(f"clip option pretrained must be a tag, a file path or None, got {opts['pretrained']!r}")
        if not isinstance(opts["model"], (str, dict)):
            raise TypeError(f"clip option model must be an open_clip model name or a config dict, got {opts['model']!r}")

    def _resolve_weights(self) -> None:
        import open_clip

        model = self.options["model"]
        pretrained = self.options["pretrained"]
        self._weights: ResolvedWeights | None = None
        self._tag_cfg: dict = {}
        if isinstance(model, dict):
            self._model_name = _register_config_dict(model)
            self._model_cfg = model
        elif model.startswith(("hf-hub:", "local-dir:")):
            weights = resolve_model(
                model,
                local_files_only=self.options["local_files_only"],
                allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin", "*.model"],
            )
            config_file = weights.path / "open_clip_config.json"
            if not config_file.is_file():
                raise ValueError(f"clip model {model!r}: {config_file} is missing; expected an open_clip model folder")
            self._model_cfg = json.loads(config_file.read_text())["model_cfg"]
            if not any(any(weights.path.glob(f"*{ext}")) for ext in (".safetensors", ".bin", ".pth")):
                # open_clip would quietly build a random model from the config alone.
                raise WeightsNotAvailable(
                    f"clip model {model!r}: {weights.path} has open_clip_config.json but no checkpoint "
                    f"(*.safetensors, *.bin or *.pth)"
                )
            self._model_name = f"local-dir:{weights.path}"
            self._weights = weights
            if pretrained is not None:
                logger.info("clip: model %s carries its own weights; pretrained=%r ignored", model, pretrained)
            return
        else:
            cfg = open_clip.get_model_config(model)
            if cfg is None:
                close = difflib.get_close_matches(model, open_clip.list_models(), n=3, cutoff=0.5)
                raise ValueError(
                    f"clip option model={model!r} is not an open_clip model"
                    + (f"; did you mean {close}?" if close else "")
                    + " (see open_clip.list_models(), or pass a config dict)"
                )
            self._model_name, self._model_cfg = model, cfg
        if pretrained is None:
            logger.warning(
                "clip %s: pretrained=None -> RANDOM INIT (seed %d). The vectors carry no learned "
                "meaning; use only for tests and plumbing", self._model_name, self.options["seed"],
            )
            return
        if os.path.isfile(os.path.expanduser(pretrained)):
            path = Path(pretrained).expanduser().resolve()
            self._weights = ResolvedWeights(pretrained, path, "local")
            return
        self._tag_cfg = open_clip.get_pretrained_cfg(self._model_name, pretrained) if isinstance(model, str) else {}
        if not self._tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(self._model_name) if isinstance(model, str) else []
            raise ValueError(
                f"clip option pretrained={pretrained!r} is neither a known tag for {self._model_name!r} "
                f"(known tags: {tags}) nor an existing checkpoint file; pretrained=None gives random init"
            )
        self._weights = _resolve_tag(self._model_name, pretrained, self._tag_cfg, self.options["local_files_only"])

    @property
    def is_random_init(self) -> bool:
        return self._weights is None

    def weights_id(self) -> str:
        if self._weights is None:
            return f"random-init:{self.options['seed']}"
        return self._weights.identity()

    @property
    def embed_dim(self) -> int:
        return int(self._model_cfg["embed_dim"])

    @property
    def dim(self) -> int:
        return self.embed_dim * (2 if self.options["towers"] == "both" else 1)

    def default_num_workers(self) -> int:
        return default_num_workers() if self.options["towers"] != "text" else 0

    # ---- model ----------------------------------------------------------------------
    def _load_model(self) -> Any:
        import open_clip
        import torch

        kwargs: dict[str, Any] = {"precision": self.options["precision"], "device": self.device}
        if self._weights is not None and not self._model_name.startswith("local-dir:"):
            kwargs["pretrained"] = str(self._weights.path)
            kwargs["force_quick_gelu"] = bool(self._tag_cfg.get("quick_gelu", False))
            for key, arg in (("mean", "image_mean"), ("std", "image_std"),
                             ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
                if key in self._tag_cfg:
                    kwargs[arg] = self._tag_cfg[key]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options["seed"])
            model, _, preprocess = open_clip.create_model_and_transforms(self._model_name, **kwargs)
        model.eval()
        tokenizer = open_clip.get_tokenizer(self._model_name) if self.options["towers"] != "image" else None
        logger.info("loaded open_clip %s (%s)", self._model_name, self.weights_id())
        return model, preprocess, tokenizer

    def _encode(self, catalog, batch_size, progress, num_workers):
        towers = self.options["towers"]
        blocks, masks = [], {}
        if towers in ("image", "both"):
            vec, masks["image"] = self._encode_images(catalog, batch_size, progress, num_workers)
            blocks.append(vec)
        if towers in ("text", "both"):
            vec, masks["text"] = self._encode_texts(catalog, batch_size, progress)
            blocks.append(vec)
        vectors = np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]
        stacked = np.stack(list(masks.values()))
        valid = stacked.all(axis=0) if self.options["require"] == "all" else stacked.any(axis=0)
        extra = {f"n_items_with_{tower}": int(ok.sum()) for tower, ok in masks.items()}
        extra.update(_why_invalid(catalog, masks, valid))
        return vectors, valid, extra

    def _describe_missing(self, info: dict) -> str:
        """Names the input the invalid items lack (cover, title or either), with counts."""
        towers = self.options["towers"]
        title = "a title" if self.options["fields"] == "title" else "a title or tags"
        if towers == "image":
            return f"a usable cover image ({_cover_breakdown(info)})"
        if towers == "text":
            return title
        joined = (f"a usable cover image or {title}" if self.options["require"] == "all"
                  else f"both a usable cover image and {title}")
        texts = "titles" if self.options["fields"] == "title" else "titles+tags"
        return (f"{joined} (covers: {_cover_breakdown(info)}; "
                f"{texts}: {info.get('n_invalid_without_text', 0)} empty)")

    def _encode_images(self, catalog, batch_size, progress, num_workers):
        import torch

        model, preprocess, _ = self._model
        n = len(catalog)
        out = np.zeros((n, self.embed_dim), dtype=np.float32)
        ok_all = np.zeros(n, dtype=bool)
        batches = iterate_image_batches(catalog, range(n), batch_size, num_workers, preprocess, collate_tensors)
        total = (n + batch_size - 1) // batch_size
        with torch.inference_mode(), _autocast(self):
            for indices, ok, pixels in progress_bar(batches, total, "clip images", progress):
                if pixels is None:
                    continue
                pixels = pixels.to(self.device, dtype=_input_dtype(model, self.options["precision"]))
                feats = model.encode_image(pixels, normalize=self.options["normalize"])
                rows = indices[ok].numpy()
                out[rows] = feats.float().cpu().numpy()
                ok_all[rows] = True
        return out, ok_all

    def _encode_texts(self, catalog, batch_size, progress):
        import torch

        model, _, tokenizer = self._model
        texts = compose_texts(catalog, self.options["fields"])
        ok_all = np.array([bool(t) for t in texts], dtype=bool)
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        batches = list(batched_positions(np.flatnonzero(ok_all).tolist(), batch_size))
        with torch.inference_mode(), _autocast(self):
            for positions in progress_bar(batches, len(batches), "clip texts", progress):
                tokens = tokenizer([texts[i] for i in positions]).to(self.device)
                feats = model.encode_text(tokens, normalize=self.options["normalize"])
                out[positions] = feats.float().cpu().numpy()
        return out, ok_all


def _cover_key(kind: str) -> str:
    return "n_invalid_cover_" + kind.replace(" ", "_")


def _why_invalid(catalog, masks: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, int]:
    """Counts over the invalid items: ``n_invalid_without_text`` and, per reason their
    cover was not encoded, ``n_invalid_cover_<missing|empty|undecodable|too_large>``."""
    invalid = ~valid
    counts: dict[str, int] = {}
    if "text" in masks:
        counts["n_invalid_without_text"] = int((invalid & ~masks["text"]).sum())
    if "image" in masks:
        counts.update(_cover_counts(catalog, np.flatnonzero(invalid & ~masks["image"])))
    return counts


def _cover_counts(catalog, positions: np.ndarray) -> dict[str, int]:
    """Why the covers at ``positions`` (all failed to load) failed, judged as validation does."""
    counts = {_cover_key(kind): 0 for kind in COVER_PROBLEMS}
    source = getattr(catalog, "image_source", None)
    if source is None or not len(positions):
        counts[_cover_key(MISSING)] = len(positions)
        return counts
    found = classify_covers(source, np.asarray(catalog.item_ids)[positions], reduced=False)
    for kind, ids in found.items():
        counts[_cover_key(kind)] = len(ids)
    # A cover that failed to load yet decodes now (changed meanwhile) still failed.
    counts[_cover_key(UNDECODABLE)] += len(positions) - sum(map(len, found.values()))
    return counts


def _cover_breakdown(info: dict) -> str:
    """The ``n_invalid_cover_*`` counts of ``info`` as text, e.g. "1 missing, 2 undecodable"."""
    parts = []
    for kind in COVER_PROBLEMS:
        count = info.get(_cover_key(kind), 0)
        if count:
            limit = f" (over {MAX_COVER_PIXELS:,} pixels)" if kind == TOO_LARGE else ""
            parts.append(f"{count} {kind}{limit}")
    return ", ".join(parts) or "none"


def _input_dtype(model, precision: str):
    """Pixels must match the weights' dtype when open_clip casts the whole model."""
    import torch

    if precision in ("bf16", "pure_bf16"):
        return torch.bfloat16
    if precision in ("fp16", "pure_fp16"):
        return torch.float16
    return torch.float32


def _autocast(encoder: ClipEncoder):
    import contextlib

    import torch

    if encoder.options["precision"] == "amp" and encoder.device.startswith("cuda"):
        return torch.autocast("cuda")
    return contextlib.nullcontext()


def _register_config_dict(cfg: dict) -> str:
    """Register a dict model config with open_clip under a name derived from its content."""
    import open_clip

    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in cfg]
    if missing:
        raise ValueError(f"clip model config dict lacks {missing}; an open_clip config has embed_dim, vision_cfg, text_cfg")
    blob = json.dumps(cfg, sort_keys=True)
    name = "mmembed-custom-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
    if open_clip.get_model_config(name) is None:
        # open_clip registers configs from files only; it keeps what it read in memory,
        # so the file is needed just for the call.
        with tempfile.TemporaryDirectory(prefix="mmembed-open-clip-") as folder:
            path = Path(folder) / f"{name}.json"
            path.write_text(blob)
            open_clip.add_model_config(path)
            _forget_config_path(path)
        if open_clip.get_model_config(name) is None:
            raise RuntimeError(f"open_clip did not register the clip model config dict as {name!r}")
    return name


def _forget_config_path(path: Path) -> None:
    """Drop ``path`` from open_clip's scan list, so later rescans skip the deleted file."""
    from open_clip import factory

    paths = getattr(factory, "_MODEL_CONFIG_PATHS", None)
    if isinstance(paths, list) and path in paths:
        paths.remove(path)


def _resolve_tag(model_name: str, tag: str, tag_cfg: dict, local_files_only: bool | None) -> ResolvedWeights:
    """Find the checkpoint of an open_clip pretrained tag in the HF cache (or download it)."""
    label = f"{model_name} pretrained={tag}"
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", "")
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        try:
            return resolve_hub_file(label, repo_id, candidates, local_files_only=local_files_only)
        except WeightsNotAvailable as exc:
            raise WeightsNotAvailable(
                f"{exc}. Or, with open_clip on a networked machine: "
                f"python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{tag}')\""
            ) from None
    url = tag_cfg.get("url", "")
    target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    if target.is_file():
        return ResolvedWeights(label, target, "local")
    raise WeightsNotAvailable(
        f"weights for {label} are not in {target.parent}. Fetch them on a machine with internet "
        f"access: python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{tag}')\" "
        f"(or download {url} into {target.parent})"
    )
