"""Widget values that came through a link, checked when the node runs.

ComfyUI checks a widget's min, max and options only for a value typed into the widget, and the options only
where the input's type is the list itself (not a V3 COMBO: a choice typed into an API graph is not checked). A
value linked in from another node (a Primitive, Int, String or switch node) reaches `execute` unchecked, and
reaches `validate_inputs` as None (its producer has not run yet). So every pack node runs this check first, at
execution, with the values it is about to use: an INT or FLOAT outside the widget's range, a number of the
wrong kind, or a choice that is not in the widget's list is a clear error naming the node, the input and
what to do; and a node's fingerprint (`fingerprint_inputs`) is "unknown" (NaN: run again) while a value it
reads is linked. A seed is the one exception: any integer is a fine seed, so one outside the widget's range
(e.g. a 64-bit seed from a seed node) is folded into it, seed mod the range's size, and the log says so.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

from comfy_api.latest import io

from ..f2d_core.errors import F2DError

log = logging.getLogger(__name__)

FOLDED_INPUTS = ("seed",)  # any integer is a fine seed: folded into the widget's range, not refused


class LinkedValueError(F2DError):
    """A value linked into a widget is outside what the widget allows."""


def _display_name(node: type[io.ComfyNode]) -> str:
    return node.define_schema().display_name or node.__name__


def _widget_specs(node: type[io.ComfyNode]) -> dict[str, tuple[Any, dict]]:
    """{input name: (type, options)} of the node's required and optional inputs, as ComfyUI validates them."""
    types = node.INPUT_TYPES()
    return {name: spec for group in ("required", "optional") for name, spec in types.get(group, {}).items()}


def _fold(value: int, low: int, high: int) -> int:
    """`value` folded into [low, high] (modulo the range's size)."""
    return low + (value - low) % (high - low + 1)


def _check(node: type[io.ComfyNode], name: str, kind: Any, options: dict, value: Any) -> Any:
    where = f'{_display_name(node)}: the value linked into "{name}"'
    if kind in ("INT", "FLOAT"):
        integer = kind == "INT"
        if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
            raise LinkedValueError(
                f"{where} is {value!r} ({type(value).__name__}), not {'an integer' if integer else 'a number'}; "
                f"link a{'n Int' if integer else ' Float'} node's output, or type the value into the widget."
            )
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            if integer and name in FOLDED_INPUTS and low is not None and high is not None:
                folded = _fold(int(value), int(low), int(high))
                log.info("%s is %d, outside %d..%d: folded to %d", where, value, low, high, folded)
                return folded
            raise LinkedValueError(
                f"{where} is {value!r}, outside the widget's range {low}..{high}; change the node that "
                "produces it, or type a value into the widget."
            )
        return value
    choices = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
    if choices is not None and value not in choices:
        shown = ", ".join(repr(c) for c in list(choices)[:8]) + (", ..." if len(choices) > 8 else "")
        # ComfyUI checks a typed choice only when the input's type is the list itself (execution.py
        # validate_inputs), not for a V3 COMBO: a value typed into an API graph reaches here too
        raise LinkedValueError(
            f'{_display_name(node)}: "{name}" is {value!r}, which is not one of its choices ({shown or "none"}); '
            "pick one from the widget's list (check the spelling; for a file, that it is in its models folder), "
            "or change the node that links it in."
        )
    return value


def check_linked_values(node: type[io.ComfyNode], values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the keyword arguments of `execute`) with every widget value checked; seeds folded."""
    specs = _widget_specs(node)
    as_lists = bool(getattr(node, "INPUT_IS_LIST", False))  # a list node gets every input as a list
    checked = dict(values)
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None or value is None:
            continue
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if as_lists and isinstance(value, list):
            checked[name] = [v if v is None else _check(node, name, spec[0], options, v) for v in value]
        else:
            checked[name] = _check(node, name, spec[0], options, value)
    return checked


def with_linked_value_checks(node: type[io.ComfyNode]) -> type[io.ComfyNode]:
    """`node` with its `execute` checking its widget values first (check_linked_values); returns `node`."""
    execute = inspect.getattr_static(node, "execute").__func__
    if getattr(execute, "checks_linked_values", False):
        return node
    if inspect.iscoroutinefunction(execute):

        @functools.wraps(execute)
        async def checked(cls, **values: Any) -> Any:
            return await execute(cls, **check_linked_values(cls, values))

    else:

        @functools.wraps(execute)
        def checked(cls, **values: Any) -> Any:
            return execute(cls, **check_linked_values(cls, values))

    checked.checks_linked_values = True
    node.execute = classmethod(checked)
    fingerprint = inspect.getattr_static(node, "fingerprint_inputs", None)
    if isinstance(fingerprint, classmethod) and "fingerprint_inputs" in vars(node):
        node.fingerprint_inputs = classmethod(_unknown_when_linked(fingerprint.__func__))
    return node


def _unknown_when_linked(fingerprint: Callable[..., Any]) -> Callable[..., Any]:
    """`fingerprint_inputs` that gives NaN (never equal: the node runs again) when a value it names is linked.

    ComfyUI asks for the fingerprint before the graph runs, so a linked value is None there; the node's
    own fingerprint would fail on it (a warning in the log, and NaN anyway).
    """

    parameters = inspect.signature(fingerprint).parameters.values()
    named = {p.name for p in parameters if p.kind is not p.VAR_KEYWORD} - {"cls"}  # the widgets it reads

    @functools.wraps(fingerprint)
    def wrapped(cls, **values: Any) -> Any:
        if any(values.get(name, "") is None for name in named):
            return float("nan")
        return fingerprint(cls, **values)

    return wrapped
