"""Placement constraints: which executors may run a function, and the topic key they map to.

A function's constraints are required executor labels (``{"gpu": "a100"}`` or ``["gpu=a100"]``);
a function with an image also requires the executor's ``image`` label to be that image's name.
The *placement key* is a short canonical form used in task topic names, so that an executor
subscribes to exactly the task topics whose constraints its labels satisfy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from .errors import GraphValidationError

IMAGE_LABEL = "image"
ANY_PLACEMENT = "any"
_SAFE = re.compile(r"^[A-Za-z0-9]+$")  # "-" and "_" separate the readable key's parts
_MAX_READABLE_KEY = 60

ConstraintsInput = Mapping[str, str] | Iterable[str] | None


def normalize_constraints(raw: ConstraintsInput, *, function: str = "") -> dict[str, str]:
    """Turn ``{"k": "v"}`` or ``["k=v", "k==v"]`` into a sorted ``{k: v}`` mapping."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        items = [(str(k), str(v)) for k, v in raw.items()]
    elif isinstance(raw, str):
        items = [_parse_expression(raw, function)]
    else:
        items = [_parse_expression(str(expr), function) for expr in raw]
    result: dict[str, str] = {}
    for key, value in items:
        if not key or not value:
            raise GraphValidationError(
                f"function {function!r}: placement constraint {key!r}={value!r} needs both a "
                "label name and a value, e.g. placement_constraints={'gpu': 'a100'}",
                function=function,
                parameter="placement_constraints",
            )
        result[key] = value
    return dict(sorted(result.items()))


def _parse_expression(expr: str, function: str) -> tuple[str, str]:
    key, sep, value = expr.replace("==", "=").partition("=")
    if not sep:
        raise GraphValidationError(
            f"function {function!r}: placement constraint {expr!r} is not of the form "
            "'label=value' (for example 'gpu=a100')",
            function=function,
            parameter="placement_constraints",
        )
    return key.strip(), value.strip()


def required_labels(image_name: str | None, constraints: Mapping[str, str]) -> dict[str, str]:
    """Every label an executor must carry to run the function."""
    labels = dict(constraints)
    if image_name is not None:
        labels[IMAGE_LABEL] = image_name
    return dict(sorted(labels.items()))


def placement_key(required: Mapping[str, str]) -> str:
    """A short, topic-safe, canonical name for a set of required labels."""
    if not required:
        return ANY_PLACEMENT
    readable = "_".join(f"{k}-{v}" for k, v in sorted(required.items()))
    if len(readable) <= _MAX_READABLE_KEY and all(
        _SAFE.match(part) for kv in required.items() for part in kv
    ):
        return readable
    digest = hashlib.sha1(repr(sorted(required.items())).encode()).hexdigest()[:12]
    return f"p{digest}"


def satisfies(labels: Mapping[str, str], required: Mapping[str, str]) -> bool:
    """True when an executor with ``labels`` may run a function requiring ``required``."""
    return all(labels.get(key) == value for key, value in required.items())
