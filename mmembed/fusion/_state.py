"""A fitted head's state, saved without the head listing it: every public attribute whose
name ends in ``_`` (scikit-learn's convention for what ``fit`` learns).

Plain values (None, bool, int, float, str, lists and str-keyed dicts of them) go to the
JSON config; numpy arrays and numpy scalars go to the ``.npz`` (a scalar as a 0-d array, so
its dtype comes back), referenced in the JSON as ``{"__array__": key}``; a torch module
goes to the ``.npz`` as its ``state_dict`` (``key.<parameter>``), referenced as
``{"__network__": key}``, and is rebuilt on load by the head's ``_new_network(name)``
once every other attribute is back (so the hook can read them).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

ARRAY = "__array__"
NETWORK = "__network__"
#: Version of the layout written by ``encode_state``; folders without it hold the
#: per-head layout of mmembed before 5 Dec 2026 (read by each head's ``_load_state_v1``).
STATE_FORMAT = 2


def fitted_attributes(head: Any) -> dict[str, Any]:
    """The head's fitted attributes: public names ending in ``_``."""
    return {k: v for k, v in vars(head).items() if k.endswith("_") and not k.startswith("_")}


def encode_state(head: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-able tree per fitted attribute, named arrays)."""
    arrays: dict[str, np.ndarray] = {}
    state = {name: _encode(value, name, arrays, type(head).__name__, top=True)
             for name, value in sorted(fitted_attributes(head).items())}
    return state, arrays


def decode_state(head: Any, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Set the attributes ``encode_state`` saved, networks last through ``_new_network``."""
    networks = []
    for name, tree in state.items():
        if isinstance(tree, dict) and set(tree) == {NETWORK}:
            networks.append(name)
        else:
            setattr(head, name, _decode(tree, arrays))
    for name in networks:
        import torch

        prefix = name + "."
        net = head._new_network(name)
        net.load_state_dict({k[len(prefix):]: torch.as_tensor(v) for k, v in arrays.items()
                             if k.startswith(prefix)})
        setattr(head, name, net.eval())


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray], owner: str, top: bool = False) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):  # before float: np.float64 is a float
        if path in arrays:
            raise ValueError(f"{owner}.{path}: two fitted values map to one saved key")
        arrays[path] = np.asarray(value)
        return {ARRAY: path}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{path}.{i}", arrays, owner) for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{owner}.{path}: a saved dict needs str keys, got {bad[:3]!r}")
        return {k: _encode(v, f"{path}.{k}", arrays, owner) for k, v in value.items()}
    if _is_module(value):
        if not top:
            raise TypeError(f"{owner}.{path}: a torch module is saved only as an attribute of its own")
        for key, tensor in value.state_dict().items():
            arrays[f"{path}.{key}"] = tensor.detach().cpu().numpy()
        return {NETWORK: path}
    raise TypeError(f"{owner}.{path}: cannot save a {type(value).__name__}; fitted state must be plain "
                    "values, numpy arrays, lists or str-keyed dicts of them, or a torch module")


def _decode(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(tree, list):
        return [_decode(v, arrays) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {ARRAY}:
            value = arrays[tree[ARRAY]]
            return value[()] if value.ndim == 0 else value  # a 0-d array was a numpy scalar
        return {k: _decode(v, arrays) for k, v in tree.items()}
    return tree


def _is_module(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(value, torch.nn.Module)
