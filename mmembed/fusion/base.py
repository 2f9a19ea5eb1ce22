"""The fusion-head protocol: per-encoder item features in, one item vector out.

Fusion heads follow scikit-learn's estimator shape: ``__init__`` only stores its
parameters, ``fit(features, sequences=None)`` learns attributes whose names end in ``_``,
``transform`` maps features to vectors, and ``transform`` before ``fit`` raises
``sklearn.exceptions.NotFittedError``. A fitted head saves to a folder (a JSON file for
parameters and small state, an ``.npz`` for arrays; no pickle) and loads back to give
identical outputs: every fitted attribute is saved without the head listing it
(``mmembed/fusion/_state.py``); a head holding a torch module rebuilds it in
``_new_network(name)``.

``features`` is a mapping from an encoder name to that encoder's output for the same
items in the same order: an ``EncodedFeatures`` (anything with ``.vectors`` and
``.valid``), a ``(vectors, valid)`` pair, or a bare 2-D array (every row valid).
"""
from __future__ import annotations

import inspect
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
from sklearn.exceptions import NotFittedError

from ctr_eval.format import atomic_path
from mmembed.fusion._state import STATE_FORMAT, decode_state, encode_state, fitted_attributes

logger = logging.getLogger(__name__)

FUSION_CONFIG_FILE = "fusion.json"
FUSION_STATE_FILE = "fusion_state.npz"


@dataclass(frozen=True)
class FeatureBlock:
    """One encoder's features, checked: float32 (N, d) vectors and a bool (N,) mask."""

    name: str
    vectors: np.ndarray
    valid: np.ndarray


def as_blocks(features: Mapping[str, Any]) -> list[FeatureBlock]:
    """Check and normalise the ``features`` argument of ``fit``/``transform``."""
    if not isinstance(features, Mapping) or not features:
        raise TypeError(
            "features must be a non-empty mapping {encoder name: EncodedFeatures | "
            f"(vectors, valid) | 2-D array}}, got {type(features).__name__}"
            + (" (empty)" if isinstance(features, Mapping) else "")
        )
    blocks = []
    for name, value in features.items():
        if hasattr(value, "vectors") and hasattr(value, "valid"):
            vectors, valid = value.vectors, value.valid
        elif isinstance(value, tuple) and len(value) == 2:
            vectors, valid = value
        else:
            vectors, valid = value, None
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
            raise ValueError(
                f"features[{name!r}]: expected a numeric 2-D array (items, dims), "
                f"got dtype {vectors.dtype} and shape {vectors.shape}"
            )
        vectors = vectors.astype(np.float32, copy=False)
        if valid is None:
            valid = np.ones(len(vectors), dtype=bool)
        valid = np.asarray(valid)
        if valid.shape != (len(vectors),) or valid.dtype != np.bool_:
            raise ValueError(
                f"features[{name!r}]: the valid mask must be a bool array of shape "
                f"({len(vectors)},), got dtype {valid.dtype} and shape {valid.shape}"
            )
        bad_rows = np.flatnonzero(valid & ~np.isfinite(vectors).all(axis=1))
        if bad_rows.size:
            raise ValueError(
                f"features[{name!r}]: {bad_rows.size} valid row(s) hold NaN or inf "
                f"(first rows {bad_rows[:5].tolist()}); features must be finite"
            )
        blocks.append(FeatureBlock(str(name), vectors, valid))
    sizes = {b.name: len(b.vectors) for b in blocks}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"features disagree on the number of items: {sizes}")
    return blocks


class FusionHead(ABC):
    """Base class of fusion heads; subclasses register with ``@register_fusion(name)``."""

    name: ClassVar[str] = ""
    #: True for heads that learn from user sequences (``fit(features, sequences)``).
    uses_sequences: ClassVar[bool] = False
    #: Parameters that make the head small and fast for the contract tests
    #: (tests/test_fusion_contract.py); every registered head must set it.
    tiny_params: ClassVar[dict[str, Any] | None] = None
    #: True for heads whose ``fit`` also gives each item a discrete code (a semantic ID):
    #: ``codes_``, an (items, levels) int array in the fitted items' order.
    makes_codes: ClassVar[bool] = False

    # -- parameters (scikit-learn convention: read from the __init__ signature) --------
    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's parameter names, in order."""
        signature = inspect.signature(cls.__init__)
        return [
            p.name for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def _store_params(self, arguments: Mapping[str, Any]) -> None:
        """Keep every constructor argument as an attribute of the same name (heads call
        ``self._store_params(locals())`` as their ``__init__``'s only line)."""
        for name in self.param_names():
            setattr(self, name, arguments[name])

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, JSON-able."""
        return {name: getattr(self, name) for name in self.param_names()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- the protocol ---------------------------------------------------------------
    @abstractmethod
    def fit(self, features: Mapping[str, Any], sequences: Any = None) -> "FusionHead":
        raise NotImplementedError

    @abstractmethod
    def transform(self, features: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def check_input_widths(self, widths: Mapping[str, int]) -> None:
        """Refuse, before any encoder runs, encoder widths ({name: dims}) this head cannot
        fuse; the default accepts any."""

    def fit_transform(self, features: Mapping[str, Any], sequences: Any = None) -> np.ndarray:
        return self.fit(features, sequences).transform(features)

    def diagnostics(self) -> dict[str, Any]:
        """JSON-able figures of the fit worth showing in a report (e.g. codebook use);
        none by default."""
        return {}

    @property
    def is_fitted(self) -> bool:
        return bool(fitted_attributes(self))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(features) "
                "before transform"
            )

    # -- persistence ------------------------------------------------------------------
    def _new_network(self, name: str) -> Any:
        """A fresh torch module for the fitted attribute ``name`` (its weights are loaded
        after); called on load, once every other fitted attribute is back."""
        raise NotImplementedError(f"{type(self).__name__} saved a torch module as {name!r}: "
                                  "define _new_network(name) to rebuild it")

    def _load_state_v1(self, state: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Read a folder saved before fitted state was saved generically (no
        ``state_format`` in its config); heads of that time override this."""
        raise ValueError(f"{type(self).__name__}: this folder was saved in an older layout "
                         "that this head cannot read; fit and save it again")

    def save(self, directory: str | Path) -> Path:
        """Write the fitted head into ``directory`` (created if needed), atomically per file."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state, arrays = encode_state(self)
        from mmembed import __version__

        config = {
            "name": self.name,
            "params": self.get_params(),
            "state": state,
            "state_format": STATE_FORMAT,
            "mmembed_version": __version__,
        }
        # Arrays first, config last: a folder with a config always has its arrays.
        with atomic_path(directory / FUSION_STATE_FILE) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        with atomic_path(directory / FUSION_CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "FusionHead":
        """Load a head saved by :meth:`save`; on the base class, dispatch by saved name."""
        directory = Path(directory)
        config_path = directory / FUSION_CONFIG_FILE
        state_path = directory / FUSION_STATE_FILE
        for path in (config_path, state_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: expected a folder written by FusionHead.save "
                    f"(holding {FUSION_CONFIG_FILE} and {FUSION_STATE_FILE})"
                )
        config = json.loads(config_path.read_text())
        target = cls
        if not cls.name:
            from mmembed.fusion import get_fusion

            target = get_fusion(config["name"])
        elif config["name"] != cls.name:
            raise ValueError(
                f"{config_path} holds a {config['name']!r} head, not {cls.name!r}; "
                "load it with mmembed.fusion.load_fusion"
            )
        known = set(target.param_names())
        retired = sorted(set(config["params"]) - known)
        if retired:  # e.g. ``epochs`` of trained heads saved before step budgets
            logger.info("%s: ignoring parameter(s) %s of an older mmembed (fitted state is kept)",
                        config_path, ", ".join(retired))
        head = target(**{k: v for k, v in config["params"].items() if k in known})
        with np.load(state_path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if config.get("state_format", 1) == 1:
            head._load_state_v1(config["state"], arrays)
        elif config["state_format"] == STATE_FORMAT:
            decode_state(head, config["state"], arrays)
        else:
            raise ValueError(f"{config_path}: state_format {config['state_format']} is newer than this "
                             f"mmembed reads ({STATE_FORMAT}); upgrade mmembed")
        return head
