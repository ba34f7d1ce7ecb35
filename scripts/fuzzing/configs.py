"""Configs for the parser, from hypothesis: lines that are nearly right (the one-time keys
among them, pointing at real files: good, readable by others, short, missing), the example
config cut, spliced and with characters changed, and arbitrary text.

The property: parse_config accepts the text, or raises ConfigError whose every message is
`fuzz.conf:LINE: ...` with LINE a line of the text; nothing else escapes. An accepted config
has its warnings in the same form and builds an engine.
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tportknockd.config import ConfigError, parse_config
from tportknockd.matching.engine import Engine

#: Examples per hypothesis run: a long run is made of several (hypothesis keeps a record of
#: every example of a run, which grows with it).
CHUNK = 20_000
LOCATED = re.compile(r"fuzz\.conf:(\d+): \S")


def write_key_files(directory: str) -> None:
    """The files the one-time keys point at: a good secret, one others can read, a short
    one, lists."""
    for name, content, mode in (
        ("good.key", "a secret of thirty-two bytes, ok\n", 0o600),
        ("open.key", "a secret of thirty-two bytes, ok\n", 0o644),
        ("short.key", "short\n", 0o600),
        ("once.list", "# used\n7000,8000:udp\ntcp:1:s udp:2\n9000:icmp\n", 0o600),
        ("good.list", "7000,8000:udp,9000\n", 0o600),
    ):
        path = os.path.join(directory, name)
        with open(path, "w") as file:
            file.write(content)
        os.chmod(path, mode)


def line_choices(files: str) -> list[str]:
    return [
        f" otp_secret = {files}/good.key",
        f" otp_secret = {files}/open.key",
        f" otp_secret = {files}/short.key",
        f" otp_secret = {files}/missing.key",
        f" otp_secret = {files}",
        " otp_length = 8",
        " otp_length = 0",
        " otp_ports = 1000-1001",
        " otp_ports = 65535-1",
        " otp_frames = tcp:s tcp:fu udp",
        " otp_frames = tcp:i",
        " otp_window = 5",
        " otp_window = 99999999999",
        f" one_time_sequences = {files}/good.list",
        f" one_time_sequences = {files}/once.list",
        " one_time_sequences =",
        "<ssh>",
        "</ssh>",
        "<other>",
        "</other>",
        "<",
        "</>",
        " sequence = udp:1234 tcp:543:frap",
        " sequence = tcp:110:x, tcp:110:up",
        " sequence =",
        " timeout = 10",
        " timeout = -1",
        " timeout = nan",
        " start_command = echo %IP%",
        " stop_command = true",
        " command_delay = 3",
        " command_delay = 1e999",
        "# comment",
        "",
        "sequence = tcp:0",
        " bogus = 1",
        "\x00",
        "\ufeff",
    ]


def valid_configs(files: str) -> list[str]:
    """Whole configs that parse: the shipped example, and one-time events of both kinds."""
    example = Path(__file__).resolve().parents[2] / "examples" / "knock.conf"
    otp = (
        f"<otp>\n otp_secret = {files}/good.key\n otp_ports = 1000-1999\n"
        " otp_frames = tcp:s udp\n otp_window = 30\n timeout = 10\n"
        " start_command = echo %IP%\n stop_command = true\n command_delay = 5\n</otp>\n"
    )
    listed = (
        f"<list>\n one_time_sequences = {files}/once.list\n timeout = 5\n"
        " start_command = true\n</list>\n"
    )
    return [example.read_text(), otp, listed, otp + listed]


SWAPS = list("<>/=:,#. \t\r\n0159aisxz%-") + ["\x00", "\u2028", "é", "1e999", "tcp", "udp"]


@st.composite
def mutated(draw: st.DrawFn, bases: list[str]) -> str:
    """A valid config cut, spliced with another, characters changed, lines doubled."""
    text = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.integers(0, 4))
        if edit == 0:
            text = text[:at] + draw(st.sampled_from(SWAPS)) + text[at + 1 :]
        elif edit == 1:
            text = text[:at] + draw(st.sampled_from(SWAPS)) + text[at:]
        elif edit == 2:
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif edit == 3:
            other = draw(st.sampled_from(bases))
            text = text[:at] + other[draw(st.integers(0, len(other))) :]
        else:
            lines = text.split("\n")
            line = draw(st.integers(0, len(lines) - 1))
            lines.insert(line, lines[line])
            text = "\n".join(lines)
    return text


def check(text: str) -> str | None:
    """What is wrong with what parse_config made of `text`, or None."""
    lines = text.count("\n") + 1
    try:
        config = parse_config(text, "fuzz.conf")
    except ConfigError as exc:
        for message in exc.messages:
            located = LOCATED.match(message)
            if located is None or not 1 <= int(located.group(1)) <= lines:
                return f"not FILE:LINE: {message!r}"
        return None
    for warning in config.warnings:
        located = LOCATED.match(warning)
        if located is None or not 1 <= int(located.group(1)) <= lines:
            return f"warning not FILE:LINE: {warning!r}"
    Engine(config)
    return None


def fuzz_configs(
    total: int, seed: int | None, failures: list[str], progress: Callable[[int], None]
) -> int:
    """Run `total` configs; append what failed to `failures`. Returns how many ran."""
    ran = 0
    with tempfile.TemporaryDirectory(prefix="tportknockd-fuzz-") as files:
        write_key_files(files)
        configs = st.one_of(
            st.lists(st.sampled_from(line_choices(files)), max_size=30).map("\n".join),
            mutated(valid_configs(files)),
            st.text(max_size=400),
        )
        while ran < total:

            @settings(max_examples=min(CHUNK, total - ran), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(configs)
            def config_case(text: str) -> None:
                nonlocal ran
                ran += 1
                try:
                    problem = check(text)
                except Exception:
                    problem = traceback.format_exc()
                if problem is not None:
                    failures.append(f"config {text!r}:\n{problem}")

            if seed is not None:
                config_case = hypothesis_seed(seed + ran)(config_case)
            before = ran
            config_case()
            progress(ran)
            if ran == before:
                break  # hypothesis found nothing more to try
    return ran
