"""An open multimodal LLM (Qwen2-VL / Qwen2.5-VL family) over cover + title + tags.

Each item becomes one prompt: the cover image followed by a text built from ``prompt``
(with ``{title}`` and ``{tags}`` filled in), wrapped in the processor's chat template
when it has one. The vector is the mean over tokens of hidden layer ``layer`` (default
-2, the second-to-last layer, as the MM-CTR Task 1 winner did), where ``pooling`` picks
the tokens: "all" (every non-padding token), "image" (the image placeholder tokens, found
by the model's image token id) or "text" (the rest). Padding never enters the mean.

Covers are decoded and run through the processor (resizing, patching, tokenising and
padding the batch) in DataLoader workers. Batches mix images of different sizes: the
processor pads the token sequences and the attention mask keeps padding out of the mean.

dtype="auto" means bfloat16 on GPU, float32 on CPU. With require="all" (default) an item
needs a decodable cover and a non-empty title+tags text; require="any" encodes items
without a cover from the text alone (not allowed with pooling="image").
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..weights import ResolvedWeights, resolve_model
from . import register_encoder
from ._images import default_num_workers, iterate_image_batches
from .base import Encoder, check_hidden_layer, progress_bar

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "Title: {title}\nTags: {tags}\n"
    "Look at this short video's cover and title and sum up what it is about in one word:"
)
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@register_encoder("mllm")
class MllmEncoder(Encoder):
    """Qwen2-VL-style multimodal LLM: mean-pooled hidden states over cover + prompt."""

    modalities = ("image", "text")
    defaults = {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "revision": None,
        "prompt": DEFAULT_PROMPT,
        "layer": -2,                 # index into hidden_states; -1 = last, -2 = second-to-last
        "pooling": "all",            # "all" | "image" | "text"
        "normalize": True,           # L2-normalise the pooled vector
        "require": "all",            # "all": cover and text needed; "any": text-only prompts allowed
        "max_pixels": 200704,        # cap on cover pixels after resizing (256 * 28 * 28)
        "use_chat_template": True,
        "dtype": "auto",
    }
    runtime_defaults = {"device": None, "local_files_only": None}
    default_batch_size = 8

    def _check_options(self) -> None:
        opts = self.options
        if opts["pooling"] not in ("all", "image", "text"):
            raise ValueError(f"mllm option pooling must be 'all', 'image' or 'text', got {opts['pooling']!r}")
        if opts["require"] not in ("all", "any"):
            raise ValueError(f"mllm option require must be 'all' or 'any', got {opts['require']!r}")
        if opts["pooling"] == "image" and opts["require"] == "any":
            raise ValueError("mllm: pooling='image' needs a cover for every item; use require='all'")
        if isinstance(opts["layer"], bool) or not isinstance(opts["layer"], int):
            raise TypeError(f"mllm option layer must be an int (e.g. -2), got {opts['layer']!r}")
        if not isinstance(opts["prompt"], str):
            raise TypeError(f"mllm option prompt must be a string, got {opts['prompt']!r}")
        if "{title}" not in opts["prompt"]:
            raise ValueError("mllm option prompt must be a string containing '{title}' (and optionally '{tags}')")
        mp = opts["max_pixels"]
        if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < 28 * 28):
            raise ValueError(f"mllm option max_pixels must be None or an int >= 784, got {mp!r}")
        if opts["dtype"] not in _DTYPES:
            raise ValueError(f"mllm option dtype must be one of {list(_DTYPES)}, got {opts['dtype']!r}")
        if opts["dtype"] == "auto":
            # Resolved now so config() (and so the cache key) names the real dtype.
            opts["dtype"] = "bfloat16" if self.device.startswith("cuda") else "float32"

    def _resolve_weights(self) -> None:
        from transformers import AutoConfig

        self._weights: ResolvedWeights = resolve_model(
            self.options["model"], revision=self.options["revision"],
            local_files_only=self.options["local_files_only"],
        )
        try:
            config = AutoConfig.from_pretrained(str(self._weights.path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"mllm model {self.options['model']!r} at {self._weights.path}: no usable config.json ({exc})") from None
        text_config = getattr(config, "text_config", None) or config
        self._hidden_size = int(text_config.hidden_size)
        self._image_token_id = getattr(config, "image_token_id", None)
        if self._image_token_id is None:
            raise ValueError(
                f"mllm model {self.options['model']!r} ({type(config).__name__}) has no image_token_id; "
                f"expected a Qwen2-VL-style vision-language model"
            )
        n_layers = int(text_config.num_hidden_layers)
        check_hidden_layer("mllm", self.options["layer"], n_layers)

    def weights_id(self) -> str:
        return self._weights.identity()

    @property
    def dim(self) -> int:
        return self._hidden_size

    def default_num_workers(self) -> int:
        return default_num_workers()

    def _load_model(self) -> Any:
        import torch
        from transformers import AutoModel, AutoProcessor

        path = str(self._weights.path)
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        dtype = getattr(torch, self.options["dtype"])
        with _quiet_transformers():
            model, loading = AutoModel.from_pretrained(
                path, dtype=dtype, local_files_only=True, output_loading_info=True,
            )
        missing = list(loading.get("missing_keys") or [])
        if missing:
            # Never run with half-random weights.
            raise ValueError(
                f"mllm model {self.options['model']!r} at {path}: {len(missing)} weights missing from the "
                f"checkpoint (first: {missing[:3]}); the files do not match {type(model).__name__}"
            )
        unexpected = [k for k in loading.get("unexpected_keys") or [] if not k.startswith("lm_head")]
        if unexpected:
            logger.debug("mllm: checkpoint keys not used by %s: %s", type(model).__name__, unexpected[:5])
        model.to(self.device).eval()
        logger.info("loaded %s (%s) on %s as %s", self.options["model"], type(model).__name__, self.device, dtype)
        return processor, model

    def _encode(self, catalog, batch_size, progress, num_workers):
        import torch

        processor, model = self._model
        n = len(catalog)
        prompts = [self._prompt(catalog, pos) for pos in range(n)]
        collate = _PromptCollate(
            processor, prompts, self.options["use_chat_template"], self.options["require"],
            self.options["max_pixels"],
        )
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        n_with_image = 0
        batches = iterate_image_batches(catalog, range(n), batch_size, num_workers, None, collate)
        total = (n + batch_size - 1) // batch_size
        with torch.inference_mode():
            for indices, has_image, inputs in progress_bar(batches, total, "mllm", progress):
                n_with_image += int(has_image.sum())
                if inputs is None:
                    continue
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                out = model(**inputs, output_hidden_states=True, use_cache=False)
                hidden = out.hidden_states[self.options["layer"]].float()
                mask = self._token_mask(inputs)
                counts = mask.sum(dim=1, keepdim=True)
                pooled = (hidden * mask.unsqueeze(-1)).sum(dim=1) / counts.clamp(min=1)
                if self.options["normalize"]:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                rows = indices.numpy()
                vectors[rows] = pooled.cpu().numpy()
                valid[rows] = (counts.squeeze(1) > 0).cpu().numpy()
        return vectors, valid, {"n_items_with_image": n_with_image, "dtype": self.options["dtype"]}

    def _token_mask(self, inputs):
        mask = inputs["attention_mask"].bool()
        is_image = inputs["input_ids"] == self._image_token_id
        if self.options["pooling"] == "image":
            mask = mask & is_image
        elif self.options["pooling"] == "text":
            mask = mask & ~is_image
        return mask.float()

    def _prompt(self, catalog, pos: int) -> str | None:
        title = catalog.titles[pos] if isinstance(catalog.titles[pos], str) else ""
        tags_row = np.asarray(catalog.tags[pos]) if getattr(catalog, "tags", None) is not None else []
        tags = " ".join(f"tag_{int(t)}" for t in tags_row if t > 0)
        if not title.strip() and not tags:
            return None
        return self.options["prompt"].format(title=title.strip(), tags=tags or "none")


def _quiet_transformers():
    """Silence transformers' load report (the LM head the base model does not use)."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def quiet():
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(level)

    return quiet()


class _PromptCollate:
    """Runs in DataLoader workers: (index, PIL image | None) items -> processor batch.

    Returns (indices of the encoded items, has-image flags for the whole batch, inputs
    or None when nothing in the batch can be encoded).
    """

    def __init__(self, processor, prompts, use_chat_template: bool, require: str, max_pixels: int | None) -> None:
        self.processor = processor
        self.prompts = prompts
        self.use_chat_template = use_chat_template and bool(getattr(processor, "chat_template", None))
        self.require = require
        self.max_pixels = max_pixels

    def _text(self, prompt: str, with_image: bool) -> str:
        if self.use_chat_template:
            content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True,
            )
        image_part = f"<|vision_start|>{self.processor.image_token}<|vision_end|>" if with_image else ""
        return image_part + prompt

    def __call__(self, batch):
        import torch

        has_image = torch.tensor([img is not None for _, img in batch], dtype=torch.bool)
        keep, texts, images = [], [], []
        for index, image in batch:
            prompt = self.prompts[index]
            if prompt is None or (image is None and self.require == "all"):
                continue
            keep.append(index)
            texts.append(self._text(prompt, image is not None))
            if image is not None:
                images.append(image)
        if not keep:
            return torch.tensor([], dtype=torch.long), has_image, None
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
            if self.max_pixels is not None:
                shortest = self.processor.image_processor.size.get("shortest_edge") or 28 * 28
                kwargs["size"] = {"shortest_edge": min(shortest, self.max_pixels), "longest_edge": self.max_pixels}
        inputs = self.processor(**kwargs)
        return torch.tensor(keep, dtype=torch.long), has_image, dict(inputs)
