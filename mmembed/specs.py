"""Plugin specs written on one line, as the command line takes them: ``NAME``,
``NAME:key=value,...`` or a JSON object; and back."""
from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["parse_spec", "format_spec"]


def parse_spec(text: str) -> str | dict[str, Any]:
    """An encoder or fusion spec from a command line or a recipe string.

    "sbert" -> "sbert"; "clip:pretrained=null,towers=image" -> {"name": "clip",
    "pretrained": None, "towers": "image"} (values read as JSON when they parse, "None"
    as None, else kept as strings); a JSON object '{"name": "clip", ...}' -> that dict.
    """
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"spec {text!r} is not valid JSON: {err}") from None
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"a JSON spec must be an object with a 'name', got {text!r}")
        return spec
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"spec {text!r} has no name; expected NAME or NAME:key=value,key=value")
    if not rest:
        return name
    spec: dict[str, Any] = {"name": name}
    for item in rest.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"spec {text!r}: {item!r} is not key=value")
        try:
            value = None if raw.strip() == "None" else json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        spec[key.strip()] = value
    return spec


def format_spec(spec: str | Mapping[str, Any]) -> str:
    """The command-line spelling of an encoder or fusion spec; ``parse_spec`` reads it back.

    {"name": "clip", "pretrained": None, "towers": "image"} -> "clip:pretrained=None,towers=image".
    """
    if isinstance(spec, str):
        return spec
    options = {k: v for k, v in spec.items() if k != "name"}
    if not options:
        return str(spec["name"])
    items = [f"{key}={_format_value(value)}" for key, value in options.items()]
    text = f"{spec['name']}:{','.join(items)}"
    try:
        if parse_spec(text) == dict(spec):
            return text
    except ValueError:
        pass
    return json.dumps(dict(spec))  # a value with "," or "=" would misread in NAME:key=value form


def _format_value(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value  # parse_spec keeps text that is not JSON as it is
    return json.dumps(value)
