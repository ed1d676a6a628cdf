"""Shared helpers for validating YAML input (config, scenario, web config):
one error format, `file: key: value: problem`, on one line."""

from __future__ import annotations

import math
from typing import Any

import yaml

# PyYAML's constructors raise more than YAMLError: impossible dates and ints past
# Python's digit limit (ValueError), deep nesting (RecursionError).
YAML_ERRORS = (yaml.YAMLError, ValueError, OverflowError, RecursionError, TypeError)
LARGEST_NUMBER = 1e15  # no setting is anywhere near; bigger ints would overflow floats
MAX_SHOWN_CHARS = 80  # fuzzed input can be huge; an error line stays short

MISSING: Any = object()  # "no value to show" (a key that is absent)


def show(value: Any) -> str:
    """A value as an error message echoes it: strings quoted, anything else as
    written, non-printable text escaped, cut to MAX_SHOWN_CHARS."""
    if value is MISSING:
        return ""
    text = repr(value) if isinstance(value, str) else str(value)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def yaml_where(err: BaseException) -> str:
    """' at line L, column C' for YAML syntax errors, else ''."""
    mark = getattr(err, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def key_text(name: Any) -> str:
    """A key as it appears in an error: plain when printable, else its repr,
    so a hostile key cannot break the one-line message."""
    text = str(name)
    return text if text.isprintable() and len(text) <= MAX_SHOWN_CHARS else repr(text[:MAX_SHOWN_CHARS])


def is_number(value: Any) -> bool:
    """A finite int or float of sane size (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= LARGEST_NUMBER and (isinstance(value, int) or math.isfinite(value))
