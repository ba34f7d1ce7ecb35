"""The knock configuration language: `<NAME> ... </NAME>` blocks of `key = value` lines.

Parsing never stops at the first problem: every error is collected and reported at once as
`FILE:LINE: message`, in line order, so one `tportknockd -C` run shows everything to fix.
"""

from __future__ import annotations

import codecs

from tportknockd.config.blocks import BlockReader, ConfigError, Problems
from tportknockd.config.events import build_events
from tportknockd.config.report import check_report
from tportknockd.config.values import parse_seconds
from tportknockd.config.warnings import warnings
from tportknockd.frame_syntax import format_frame, parse_frame
from tportknockd.model import Config

__all__ = [
    "ConfigError",
    "check_report",
    "format_frame",
    "load_config",
    "parse_config",
    "parse_frame",
    "parse_seconds",
]

#: A config file is a handful of lines; the cap keeps `-C /dev/zero` from eating memory.
MAX_CONFIG_BYTES = 1 << 20


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse config text; ConfigError lists every problem as `PATH:LINE: message`."""
    return _parse(text, path, Problems())


def _parse(text: str, path: str, problems: Problems) -> Config:
    blocks = BlockReader(problems).read(text)
    events = build_events(blocks, problems)
    if not blocks:
        problems.add(1, "no events defined (expected at least one <NAME> ... </NAME> block)")
    if problems.items:
        raise ConfigError(problems.render(path))
    return Config(
        path=path,
        events=tuple(event for event, _ in events),
        warnings=warnings(path, events),
    )


def load_config(path: str) -> Config:
    """Read and parse a config file; unreadable and non-UTF-8 files raise ConfigError too."""
    data = _read_bytes(path)
    text, undecodable = _decode_lines(data)
    problems = Problems()
    try:
        config = _parse(text, path, problems)
    except ConfigError:
        config = None
    if config is not None and not undecodable:
        return config
    # A line with broken bytes gets only the UTF-8 complaint, not follow-on noise.
    problems.items = [item for item in problems.items if item[0] not in undecodable]
    problems.items.extend(undecodable.items())
    raise ConfigError(problems.render(path))


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: cannot read: larger than {MAX_CONFIG_BYTES} bytes"])
    return data


def _decode_lines(data: bytes) -> tuple[str, dict[int, str]]:
    """Decode line by line so every non-UTF-8 line is reported with its number."""
    data = data.removeprefix(codecs.BOM_UTF8)
    lines: list[str] = []
    undecodable: dict[int, str] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            undecodable[number] = (
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            )
            lines.append(raw.decode("utf-8", errors="replace"))
    return "\n".join(lines), undecodable
