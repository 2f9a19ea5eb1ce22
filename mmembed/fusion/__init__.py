"""Fusion heads: per-encoder item features -> one item vector, registered by name.

    create_fusion("concat_pca", dim=128)
    create_fusion({"name": "concat_pca", "dim": 64, "normalize": False})
    list_fusions()                      # -> ["concat_pca", ...]
    load_fusion(folder)                 # a head saved with head.save(folder)

A new head is one file with a ``FusionHead`` subclass decorated by
``@register_fusion("my_head")`` and an import line at the bottom of this module.
"""
from __future__ import annotations

from ctr_eval.registry import Registry
from mmembed.fusion.base import FusionHead, as_blocks

FUSIONS: Registry[type[FusionHead]] = Registry("fusion head", base=FusionHead)

__all__ = [
    "FusionHead",
    "FUSIONS",
    "as_blocks",
    "create_fusion",
    "get_fusion",
    "list_fusions",
    "load_fusion",
    "register_fusion",
]

#: ``@register_fusion("my_head")`` registers a FusionHead subclass under a name.
register_fusion = FUSIONS.register
#: The class registered as a name; unknown names list the known ones.
get_fusion = FUSIONS.get
#: Registered fusion head names, sorted.
list_fusions = FUSIONS.names
#: A head from a name, a ``{"name": ..., **params}`` dict, or an instance (passed
#: through); unknown parameters raise TypeError naming the valid ones.
create_fusion = FUSIONS.create


def load_fusion(directory) -> FusionHead:
    """Load any registered head saved with ``FusionHead.save(directory)``."""
    return FusionHead.load(directory)


# Built-in heads register themselves on import.
from mmembed.fusion import concat_pca as _concat_pca  # noqa: E402,F401
from mmembed.fusion import modality_pca as _modality_pca  # noqa: E402,F401
from mmembed.fusion import contrastive as _contrastive  # noqa: E402,F401
from mmembed.fusion import gated as _gated  # noqa: E402,F401
from mmembed.fusion import rq as _rq  # noqa: E402,F401
from mmembed.fusion import rq_vae as _rq_vae  # noqa: E402,F401
