"""Values that several keys share: numbers of seconds; text shortened for messages."""

from __future__ import annotations

import math


def shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_seconds(text: str) -> float:
    """A positive, finite number of seconds (`10`, `2.5`); ValueError says what is wrong."""
    if not text:
        raise ValueError("no value: expected a number of seconds, e.g. 10")
    try:
        if not text.isascii() or "_" in text:
            raise ValueError
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{shorten(text)!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite number of seconds")
    if seconds <= 0:
        raise ValueError(f"{text!r} must be greater than 0 seconds")
    return seconds


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    number = str(int(seconds)) if seconds.is_integer() else repr(seconds)
    return f"{number} s"
