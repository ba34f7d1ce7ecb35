"""The man pages cannot drift from the program: what they document is derived from the code.

Every option of both command lines (the argparse parsers and `tportknockd -h`) has an entry
that carries the option's help text and default; every config key the parser knows has an
entry; the frame grammar and the config skeleton are the README's, word for word; the
matching rules are numbered here and nowhere else (tests/test_docs.py); the examples parse;
the version is the program's. A change to any of those fails
here until the man page follows. The pages render without a single groff warning.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
from pathlib import Path

import pytest
import tomllib

from packaging_helpers import (
    MAN,
    REPO,
    code_blocks,
    man_sections,
    man_version,
    normalized,
    options_in,
    readme_section,
    require_tool,
    unit_capabilities,
)
from tportknockd import __version__, client
from tportknockd.cli import HELP, build_parser
from tportknockd.config import ConfigError, blocks, parse_config
from tportknockd.daemon import loop

PAGES = ["tportknockd.8", "tportknockd.conf.5", "tportknock.1"]


# --- the command lines -----------------------------------------------------------------------


def _option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions if action.option_strings]


def _help_descriptions() -> dict[str, str]:
    """`tportknockd -h`: each option → its description (continuation lines joined)."""
    found: dict[str, str] = {}
    last: str | None = None
    for line in HELP.splitlines():
        match = re.match(r"^  (-\w|--[\w-]+)(?: [A-Z]+)?\s{2,}(.*)$", line)
        if match:
            last = match.group(1)
            found[last] = match.group(2)
        elif last and re.match(r"^\s{10,}\S", line):
            found[last] += " " + line.strip()
        else:
            last = None
    return found


def _entry_for(entries: dict[str, str], option: str) -> str:
    for tag, body in entries.items():
        if option in options_in(tag.split(" ")[0]) or option in {
            word.rstrip(",") for word in tag.split()
        }:
            return body
    pytest.fail(f"no entry for {option} under OPTIONS: add one (.TP, then the option)")


def test_every_daemon_option_has_an_entry_with_its_help_text() -> None:
    entries = man_sections("tportknockd.8")["OPTIONS"].entries()
    descriptions = _help_descriptions()
    in_parser = {s for action in _option_actions(build_parser()) for s in action.option_strings}
    # The help lists what the parser takes; the page must cover both.
    assert set(descriptions) <= in_parser, set(descriptions) - in_parser
    for option in sorted(in_parser):
        body = _entry_for(entries, option)
        if option in descriptions:
            assert normalized(descriptions[option]) in normalized(body), (
                f"the man page's entry for {option} should say what `tportknockd -h` says: "
                f"{descriptions[option]!r}"
            )


def test_daemon_defaults_in_the_man_page_are_the_programs() -> None:
    entries = man_sections("tportknockd.8")["OPTIONS"].entries()
    for action in _option_actions(build_parser()):
        if action.default in (None, False) or not action.option_strings[0].startswith("--"):
            continue
        value = f"{action.default:g}" if isinstance(action.default, float) else action.default
        body = _entry_for(entries, action.option_strings[0])
        assert f"(default {value}" in body, f"{action.option_strings[0]}: default {value}"


def test_every_documented_daemon_option_exists() -> None:
    tags = man_sections("tportknockd.8")["OPTIONS"].entries()
    documented = {option for tag in tags for option in options_in(tag)}
    in_parser = {s for action in _option_actions(build_parser()) for s in action.option_strings}
    assert documented <= in_parser, f"documented but unknown: {documented - in_parser}"


def test_every_client_option_has_an_entry_with_its_help_text() -> None:
    entries = man_sections("tportknock.1")["OPTIONS"].entries()
    parser = client.build_parser()
    documented = {option for tag in entries for option in options_in(tag)}
    in_parser = set()
    for action in parser._actions:
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        if action.option_strings:
            in_parser.update(action.option_strings)
            body = _entry_for(entries, action.option_strings[0])
        else:
            body = entries.get(str(action.metavar).lower(), "")
            assert body, f"no entry for {action.metavar} under OPTIONS"
        assert normalized(help_text) in normalized(body), (
            f"tportknock(1) should say what `tportknock -h` says: {help_text!r}"
        )
    assert documented <= in_parser, f"documented but unknown: {documented - in_parser}"


def test_every_signal_the_daemon_handles_is_documented() -> None:
    handled = {signal.Signals(signum).name for signum in loop.HANDLED_SIGNALS}
    documented = {word.rstrip(",") for tag in man_sections("tportknockd.8")["SIGNALS"].entries()
                  for word in tag.split()}
    assert handled and handled == documented


def test_the_units_capabilities_are_the_ones_documented() -> None:
    text = man_sections("tportknockd.8")["SYSTEMD"].text()
    for capability in unit_capabilities("AmbientCapabilities"):
        assert capability in text


# --- the configuration language --------------------------------------------------------------


def _config_keys() -> set[str]:
    """Every key the parser knows: the block reader's KEYS."""
    keys: set[str] = set()
    for name, value in vars(blocks).items():
        if name.endswith("KEYS") and isinstance(value, tuple):
            keys.update(value)
    return keys


def _documented_keys(section: str) -> set[str]:
    entries = man_sections("tportknockd.conf.5")[section].entries()
    return {tag.split(" =")[0] for tag in entries}


def test_every_config_key_has_an_entry() -> None:
    sections = man_sections("tportknockd.conf.5")
    documented = {tag.split(" =")[0] for section in sections.values()
                  for tag in section.entries()}
    missing = _config_keys() - documented
    assert not missing, f"config keys without an entry in tportknockd.conf(5): {missing}"


def test_every_key_under_keys_exists() -> None:
    assert _documented_keys("KEYS") <= _config_keys()


def test_config_skeleton_and_frame_grammar_are_the_readmes() -> None:
    readme = code_blocks(readme_section("Configuration"))
    page = man_sections("tportknockd.conf.5")
    assert page["DESCRIPTION"].examples()[0] == readme[0]
    assert page["FRAMES"].examples()[0] == readme[1]


def test_matching_rules_are_numbered_in_order() -> None:
    # The page is the one normative copy: code and docs cite "rule N of tportknockd.conf(5)".
    lines = man_sections("tportknockd.conf.5")["MATCHING RULES"].lines
    labels = [line.split()[1] for line in lines if line.startswith(".IP")]
    assert labels == [f"{number}." for number in range(1, len(labels) + 1)]
    for source in ("matching/engine.py", "kernel/program.py"):
        assert "tportknockd.conf(5)" in (REPO / "src" / "tportknockd" / source).read_text(), (
            f"{source} should point at the rules it implements"
        )


def _examples() -> list[str]:
    return [block for block in man_sections("tportknockd.conf.5")["EXAMPLES"].examples()
            if block.startswith("<")]


@pytest.mark.parametrize("example", _examples(), ids=lambda block: block.split(">")[0][1:])
def test_config_examples_parse(example: str, tmp_path: Path) -> None:
    if "otp_secret" in example:
        secret = tmp_path / "ssh.key"
        secret.write_text("correct horse battery staple 42\n")
        secret.chmod(0o600)
        example = example.replace("/etc/tportknockd/ssh.key", str(secret))
    try:
        parsed = parse_config(example, "tportknockd.conf.5")
    except ConfigError as exc:
        pytest.fail(f"example in tportknockd.conf(5) does not parse:\n{exc}")
    assert len(parsed.events) == 1


def test_one_time_section_names_every_one_time_key() -> None:
    text = man_sections("tportknockd.conf.5")["ONE-TIME SEQUENCES"].text()
    for key in ("otp_secret", "otp_length", "otp_ports", "otp_frames", "otp_window",
                "one_time_sequences"):
        assert key in text


# --- the pages as a whole --------------------------------------------------------------------


def test_pages_carry_the_programs_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    for page in PAGES:
        assert man_version(page) == __version__, f"{page}: .TH names another version"


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page: str) -> None:
    require_tool("groff", "groff-base")
    groff = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / page)],
                           capture_output=True, text=True, timeout=60)
    assert (groff.returncode, groff.stderr) == (0, "")
    require_tool("man", "man-db")
    # What lintian runs on every man page of a package.
    env = {"LC_ALL": "C.UTF-8", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"}
    man = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z",
                          str(MAN / page)], capture_output=True, text=True, env=env, timeout=60)
    assert (man.returncode, man.stderr) == (0, "")
