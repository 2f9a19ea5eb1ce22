"""Model + training configurations of the CTR evaluator.

Each model's config is a frozen dataclass beside the model (``ctr_eval/models/din.py``:
``DINConfig``, the challenge's Task 1 DIN with the official baseline's resolved values;
``ctr_eval/models/transact_dcn.py``: ``TransActConfig``, the 1st-place Task 2 model). It
extends :class:`TrainingConfig` and holds every field that changes what a result means,
each with its limits declared (:func:`setting`, :func:`probability`); this module checks
overrides against them for any model, and locks the DIN in Task 1 mode.

FuxiCTR behaviours that live in its ``BaseModel`` (not in the model file) are fields
here too, so they are recorded and hashed: gradient clipping (``fit(max_gradient_norm=10.)``),
learning-rate decay on a plateau (``BaseModel(reduce_lr_on_plateau=True)`` +
``lr_decay(factor=0.1, min_lr=1e-6)`` called from ``checkpoint_and_earlystop``), the
early-stopping ``min_delta=1e-6``.

Task 1 mode locks the DIN: only :data:`TASK1_TUNABLE` may differ from the defaults, as
the challenge rules say. Run controls that do not change a result's meaning (an epoch
cap for a demo, worker counts, output folders) are the trainer's arguments, not fields.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "probability",
    "setting",
    "TrainingConfig",
    "TASK1_TUNABLE",
    "resolve_config",
    "config_hash",
    "config_to_dict",
    "parse_regularizer",
]

Regularizer = Union[float, str]

TASK1_TUNABLE = frozenset(
    {"embedding_regularizer", "net_regularizer", "net_dropout", "learning_rate", "batch_size"}
)


def setting(default: Any, *, at_least: float | None = None, above: float | None = None,
            below: float | None = None, choices: tuple[str, ...] | None = None,
            added: bool = False) -> Any:
    """A config field with its constraints declared beside it, checked by ``resolve_config``
    for every model alike. Without them an integer must be >= 1 and a float >= 0 (and
    finite); ``choices`` are matched case-insensitively and stored as spelt here.
    ``added``: a field added after configs were first recorded; at its default it is left
    out of the config's JSON and hash, so runs recorded before it existed keep their hash."""
    limits = {k: v for k, v in (("at_least", at_least), ("above", above), ("below", below),
                                ("choices", choices)) if v is not None}
    if added:
        limits["added"] = True
    return dataclasses.field(default=default, metadata=limits)


def probability(default: float) -> Any:
    """A float in [0, 1): a dropout rate, a decay factor."""
    return setting(default, at_least=0.0, below=1.0)


@dataclass(frozen=True)
class TrainingConfig:
    """Training behaviour every model shares: FuxiCTR BaseModel's defaults (rank_model.py:
    Adam, gradient norm clipped to 10, lr x0.1 on a non-improving epoch down to 1e-6,
    early stopping on validation AUC with min_delta 1e-6). A model's config subclasses it
    as a frozen dataclass (see docs/plugins.md)."""

    optimizer: str = setting("adam", choices=("adam",))
    epochs: int = 100
    monitor: str = setting("AUC", choices=("AUC",))
    min_delta: float = 1e-6
    reduce_lr_on_plateau: bool = True
    lr_decay_factor: float = probability(0.1)
    min_lr: float = 1e-6
    max_gradient_norm: float = 10.0
    shuffle: bool = True
    seed: int = 20242025
    # Task 2 features (the Task 1 lock refuses them): see ctr_eval.data.add_task2_features
    item_codes: bool = setting(False, added=True)  # semantic-ID codes (item_codes.parquet) per item
    item_levels: bool = setting(False, added=True)  # each item's likes/views levels (item_feature.parquet)
    user_id: bool = setting(False, added=True)  # a trainable user_id embedding
    user_id_buckets: int = setting(0, at_least=0, added=True)  # 0: a row per user id; else hashed

    @property
    def task2_features(self) -> list[str]:
        """The Task 2 features this config turns on, by field name."""
        return [name for name in ("item_codes", "item_levels", "user_id") if getattr(self, name)]


_REG_PATTERN = re.compile(r"^l([12])\(([^()]+)\)$|^l1_l2\(([^(),]+),([^(),]+)\)$")


def parse_regularizer(reg: Regularizer | None) -> list[tuple[int, float]]:
    """(p, lambda) pairs of a regularizer spec, as FuxiCTR's ``get_regularizer`` reads it.

    A float means L2; strings ``"l1(x)"``, ``"l2(x)"``, ``"l1_l2(x,y)"``. 0/None -> [].
    """
    if reg is None:
        return []
    if isinstance(reg, bool):
        raise TypeError(f"regularizer must be a float or 'l1(x)'/'l2(x)'/'l1_l2(x,y)', got {reg!r}")
    if isinstance(reg, (int, float)):
        value = float(reg)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"regularizer must be a finite number >= 0, got {reg!r}")
        return [(2, value)] if value > 0 else []
    if isinstance(reg, str):
        text = reg.replace(" ", "").lower()
        try:
            return [(2, float(text))] if float(text) > 0 else []
        except ValueError:
            pass
        match = _REG_PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"regularizer {reg!r} not understood; valid: a number (L2), 'l1(x)', 'l2(x)', "
                "'l1_l2(x,y)'"
            )
        try:
            if match.group(1):
                pairs = [(int(match.group(1)), float(match.group(2)))]
            else:
                pairs = [(1, float(match.group(3))), (2, float(match.group(4)))]
        except ValueError as err:
            raise ValueError(f"regularizer {reg!r}: {err}") from None
        for _, lam in pairs:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"regularizer {reg!r}: weights must be finite and >= 0")
        return [(p, lam) for p, lam in pairs if lam > 0]
    raise TypeError(f"regularizer must be a float or a string, got {type(reg).__name__}")


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Check and normalise one override against the dataclass field's declared type."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    declared, limits = field.type, dict(field.metadata)
    # a string under `from __future__ import annotations`, else the type itself
    field_type = declared if isinstance(declared, str) else getattr(declared, "__name__", str(declared))
    if field_type == "tuple":  # a generic alias such as tuple[int, ...]
        field_type = str(declared)
    where = f"{cls.__name__}.{name}"
    if field_type == "Regularizer":
        parse_regularizer(value)  # raises on bad input
        return float(value) if isinstance(value, (int, float)) else str(value)
    if field_type == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be True or False, got {value!r}")
        return value
    if field_type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise TypeError(f"{where} must be an integer, got {value!r}")
        return _check_limits(where, value, limits or {"at_least": 1})
    if field_type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value}")
        return _check_limits(where, value, limits or {"at_least": 0.0})
    if field_type == "tuple[int, ...]":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{where} must be a list of positive integers, got {value!r}")
        items = tuple(value)
        if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
            raise ValueError(f"{where} must be a non-empty list of positive integers, got {value!r}")
        return items
    if field_type == "str":
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string, got {value!r}")
        choices = limits.get("choices")
        if choices is not None:
            spelt = {c.lower(): c for c in choices}
            if value.lower() not in spelt:
                raise ValueError(f"{where}={value!r} is not supported; valid: {sorted(choices)}")
            return spelt[value.lower()]
        return value
    raise TypeError(f"{where}: unsupported field type {field_type}")  # pragma: no cover


def _check_limits(where: str, value: float, limits: dict[str, Any]) -> float:
    """``value`` if it keeps the field's declared limits; ValueError naming them otherwise."""
    low, above, below = limits.get("at_least"), limits.get("above"), limits.get("below")
    if low is not None and below is not None and not low <= value < below:
        raise ValueError(f"{where} must be in [{low:g}, {below:g}), got {value}")
    if low is not None and value < low:
        raise ValueError(f"{where} must be >= {low:g}, got {value}")
    if above is not None and value <= above:
        raise ValueError(f"{where} must be > {above:g}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{where} must be < {below:g}, got {value}")
    return value


def resolve_config(model: str, task1: bool | None = None, **overrides: Any):
    """The frozen config of ``model`` with ``overrides`` applied and checked.

    ``task1``: Task 1 mode (the challenge's fixed DIN). ``None`` means True for "din",
    False for the other models. In Task 1 mode only the five :data:`TASK1_TUNABLE`
    fields may change; any other key raises ValueError saying so. Unknown keys raise
    ValueError naming the nearest valid one.
    """
    from ctr_eval.models import (
        config_class,  # the model registry knows each config class
    )

    cls = config_class(model)  # an unknown name raises UnknownNameError listing the models
    if task1 is None:
        task1 = model == "din"
    if task1 and model != "din":
        raise ValueError(
            f"Task 1 mode evaluates embeddings with the fixed DIN only; model {model!r} is a "
            "Task 2 model: pass task1=False"
        )
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    fixed: list[str] = []
    default = cls()
    for key, value in overrides.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown {model} config key {key!r}{hint} (valid keys: {', '.join(names)})")
        if task1 and key not in TASK1_TUNABLE:
            # A fixed key is only accepted at its default value (any spelling of it).
            try:
                same = _coerce(cls, key, value) == getattr(default, key)
            except (TypeError, ValueError):
                same = False
            if not same:
                fixed.append(key)
            continue
        values[key] = _coerce(cls, key, value)
    if task1:
        fixed.sort()
        if fixed:
            raise ValueError(
                f"Task 1 mode fixes the DIN configuration: {', '.join(fixed)} may not change; "
                f"only {', '.join(sorted(TASK1_TUNABLE))} may (pass task1=False for a free run)"
            )
    return cls(**values)


def config_to_dict(cfg) -> dict[str, Any]:
    """Plain-JSON view of a config, with the model name under "model"."""
    from ctr_eval.models import model_name_of

    out: dict[str, Any] = {"model": model_name_of(cfg)}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("added") and value == f.default:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_hash(cfg) -> str:
    """First 16 hex digits of the sha256 of the config's canonical JSON."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
