"""The configuration language's structure: `<NAME> ... </NAME>` blocks of `key = value`
lines, read into blocks of settings; every mistake is collected as (line, message)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tportknockd.config.doors import DOOR_KEYS
from tportknockd.config.values import shorten
from tportknockd.onetime.keys import LIST_KEY, OTP_KEYS, Setting

KEYS = (
    "sequence",
    "timeout",
    "start_command",
    "stop_command",
    "command_delay",
    *DOOR_KEYS,
    *OTP_KEYS,
    LIST_KEY,
)

_TAG = re.compile(r"<(/?)([A-Za-z0-9_.-]+)>")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(Exception):
    """The config is unusable; `messages` holds every problem as `FILE:LINE: message`."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages: list[str] = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass
class Block:
    name: str
    line: int
    settings: dict[str, Setting] = field(default_factory=dict)


@dataclass
class Problems:
    """Errors as (line, message); rendered with the path only at the end."""

    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))

    def render(self, path: str) -> list[str]:
        ordered = sorted(self.items, key=lambda item: item[0])
        return [f"{path}:{line}: {message}" for line, message in ordered]


class BlockReader:
    """Splits lines into blocks of settings, reporting structural mistakes as it goes."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.blocks: list[Block] = []
        self.current: Block | None = None

    def read(self, text: str) -> list[Block]:
        for number, line in enumerate(text.split("\n"), start=1):
            self._read_line(number, line.removesuffix("\r"))
        self._finish()
        return self.blocks

    def _read_line(self, number: int, line: str) -> None:
        content = _strip_comment(line).strip()
        if not content:
            return
        control = _first_control_character(content)
        if control is not None:
            self.problems.add(number, f"line contains control character U+{ord(control):04X}")
        elif content.startswith("<"):
            self._read_tag(number, content)
        else:
            self._read_setting(number, content)

    def _read_tag(self, number: int, content: str) -> None:
        match = _TAG.fullmatch(content)
        if match is None:
            self.problems.add(
                number,
                f"malformed block tag {shorten(content)!r}: expected <NAME> or </NAME>, "
                "NAME made of letters, digits, '_', '-' and '.'",
            )
        elif match.group(1):
            self._close_block(number, match.group(2))
        else:
            self._open_block(number, match.group(2))

    def _open_block(self, number: int, name: str) -> None:
        outer = self.current
        if outer is not None:
            # Most often the closing tag was forgotten: end the outer block here so the
            # rest of the file is still checked as usual.
            self.problems.add(
                number,
                f"nested block <{name}> inside <{outer.name}> (opened at line {outer.line}); "
                f"close it with </{outer.name}> first",
            )
            self.blocks.append(outer)
        self.current = Block(name, number)

    def _close_block(self, number: int, name: str) -> None:
        block = self.current
        if block is None:
            self.problems.add(number, f"closing tag </{name}> without an open block")
            return
        if name != block.name:
            self.problems.add(
                number,
                f"closing tag </{name}> does not match <{block.name}> opened at line {block.line}",
            )
        self.blocks.append(block)
        self.current = None

    def _read_setting(self, number: int, content: str) -> None:
        key, equals, value = content.partition("=")
        key = key.strip()
        if not equals or not _KEY.fullmatch(key):
            self.problems.add(number, _garbage_message(content))
            return
        block = self.current
        if block is None:
            self.problems.add(number, f"key {key!r} outside of a block (put it inside <NAME>)")
        elif key not in KEYS:
            self.problems.add(number, _unknown_key_message(key))
        elif key in block.settings:
            first = block.settings[key].line
            self.problems.add(number, f"duplicate key {key!r} (first set at line {first})")
        else:
            block.settings[key] = Setting(value.strip(), number)

    def _finish(self) -> None:
        block = self.current
        if block is not None:
            self.problems.add(
                block.line, f"block <{block.name}> is never closed (missing </{block.name}>)"
            )
            self.blocks.append(block)
            self.current = None


def _strip_comment(line: str) -> str:
    """Cut a `#` comment that starts the line or follows white space; `a#b` stays intact."""
    for index, char in enumerate(line):
        if char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _first_control_character(text: str) -> str | None:
    # A NUL or escape in a command would fail, or worse, only when the knock arrives.
    for char in text:
        if char != "\t" and (ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F):
            return char
    return None


def _garbage_message(content: str) -> str:
    first_word = content.split()[0]
    if first_word in KEYS:
        return f"missing '=' after {first_word!r}"
    return f"cannot parse {shorten(content)!r}: expected 'key = value', <NAME> or </NAME>"


def _unknown_key_message(key: str) -> str:
    if key.lower() in KEYS:
        return f"unknown key {key!r} (keys are lower-case: {key.lower()!r})"
    return f"unknown key {key!r} (known keys: {', '.join(KEYS)})"


