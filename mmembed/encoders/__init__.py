"""Encoders: one file per family, registered by name.

    >>> from mmembed.encoders import create_encoder, list_encoders
    >>> list_encoders()
    ['bert', 'clip', 'mllm', 'pixels', 'precomputed', 'sbert']
    >>> enc = create_encoder({"name": "bert", "model": "bert-base-uncased", "pooling": "mean"})

Adding an encoder: subclass :class:`Encoder` in a new module and decorate it with
``@register_encoder("my_name")``; import the module below.
"""
from __future__ import annotations

import inspect
from typing import Any

from ctr_eval.registry import Registry, UnknownNameError

from ..weights import WeightsNotAvailable
from .base import EncodedFeatures, Encoder

ENCODERS: Registry[type[Encoder]] = Registry("encoder", base=Encoder)

#: ``@register_encoder("sbert")`` registers an Encoder subclass under a name.
register_encoder = ENCODERS.register
#: The Encoder class registered as a name (unknown name -> UnknownNameError).
get_encoder = ENCODERS.get
#: Registered encoder names, sorted.
list_encoders = ENCODERS.names
#: An encoder from a name, a dict ``{"name": ..., **options}`` or an instance (passed
#: through); keyword options override the dict's; unknown options raise TypeError.
create_encoder = ENCODERS.create


def encoder_info(name: str) -> dict[str, Any]:
    """What `mmembed encoders` shows: modalities, default model and offline weights status.

    weights_offline is True (found without the network), False (missing: see
    weights_message) or None (the encoder needs options, e.g. precomputed's path).
    """
    cls = get_encoder(name)
    doc = inspect.getdoc(cls) or ""
    info: dict[str, Any] = {
        "name": name,
        "modalities": list(cls.modalities),
        "default_model": cls.defaults.get("model"),
        "options": {**cls.defaults, **cls.runtime_defaults},
        "summary": doc.splitlines()[0] if doc else "",
    }
    kwargs = {"local_files_only": True} if "local_files_only" in cls.runtime_defaults else {}
    try:
        encoder = cls(**kwargs)
    except WeightsNotAvailable as exc:
        info.update(weights_offline=False, weights_message=str(exc))
    except (TypeError, ValueError) as exc:
        info.update(weights_offline=None, weights_message=str(exc))
    else:
        info.update(
            weights_offline=True,
            weights_id=encoder.weights_id(),
            random_init=encoder.is_random_init,
            weights_message=("no learned weights" if not cls.needs_weights else
                             "random init (untrained)" if encoder.is_random_init else "found locally"),
        )
    return info


def encoders_table(names: list[str] | None = None) -> str:
    """A plain-text table of encoder_info() for every (or the given) encoder, for the CLI."""
    rows = [("name", "modalities", "default model", "weights here")]
    for name in names or list_encoders():
        info = encoder_info(name)
        status = {True: "yes", False: "missing", None: "needs options"}[info["weights_offline"]]
        if info.get("random_init"):
            status = "random init"
        elif not get_encoder(name).needs_weights:
            status = "none needed"
        rows.append((name, "+".join(info["modalities"]) or "-", str(info["default_model"] or "-"), status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


# Importing the family modules registers them. They import torch & co. lazily.
from . import bert, clip, mllm, pixels, precomputed, sbert, sbert_tuned  # noqa: E402,F401

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncodedFeatures",
    "UnknownNameError",
    "WeightsNotAvailable",
    "create_encoder",
    "encoder_info",
    "encoders_table",
    "get_encoder",
    "list_encoders",
    "register_encoder",
]
