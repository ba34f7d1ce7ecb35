"""Helpers for the packaging tests: man page sources, the systemd unit, staged installs.

The man pages are read from their roff source with a small reader that knows the few macros
they use; what it returns is the text a reader sees, so tests compare words, not markup.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAN = REPO / "man"
UNIT = REPO / "packaging" / "tportknockd.service"
FULL_ROOT_DROPIN = REPO / "packaging" / "full-root.conf"
INSTALL_SCRIPT = REPO / "packaging" / "install.sh"
BUILD_SCRIPT = REPO / "packaging" / "build-deb.sh"
SYSTEM_PYTHON = "/usr/bin/python3"


def require_tool(name: str, package: str) -> str:
    """The path of a command that `make deps` installs; a missing one fails in CI."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    message = f"{name} (Debian package {package}) is needed; `make deps` installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --- roff ------------------------------------------------------------------------------------

_FONT = re.compile(r"\\f[BIRP]|\\f\[[A-Z]*\]")
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}


def plain(text: str) -> str:
    """Roff escapes in running text as a reader sees them (the ones these pages use)."""
    text = _FONT.sub("", text)
    return text.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")


def _macro_text(macro: str, arguments: str) -> str:
    words = shlex.split(arguments, posix=True) if arguments else []
    if macro in _ALTERNATING:
        return plain("".join(words))
    return plain(" ".join(words))


@dataclass
class Section:
    name: str
    lines: list[str]  # roff source lines

    def text(self) -> str:
        """The section as one line of plain text."""
        return " ".join(filter(None, (line_text(line) for line in self.lines)))

    def entries(self) -> dict[str, str]:
        """`.TP` items: the tag's plain text → the body's plain text."""
        found: dict[str, str] = {}
        index = 0
        while index < len(self.lines):
            if self.lines[index].startswith(".TP"):
                tag = line_text(self.lines[index + 1])
                body: list[str] = []
                index += 2
                while index < len(self.lines) and not self.lines[index].startswith(
                    (".TP", ".PP", ".SS", ".IP")
                ):
                    body.append(line_text(self.lines[index]))
                    index += 1
                found[tag] = " ".join(filter(None, body))
            else:
                index += 1
        return found

    def items(self) -> list[str]:
        """`.IP` items (numbered lists), each as plain text."""
        found: list[list[str]] = []
        for line in self.lines:
            if line.startswith(".IP"):
                found.append([])
            elif line.startswith((".PP", ".TP")):
                break
            elif found:
                found[-1].append(line_text(line))
        return [" ".join(filter(None, item)) for item in found]

    def examples(self) -> list[str]:
        """The `.EX` ... `.EE` blocks, as the plain text lines they show."""
        blocks: list[str] = []
        current: list[str] | None = None
        for line in self.lines:
            if line.startswith(".EX"):
                current = []
            elif line.startswith(".EE") and current is not None:
                blocks.append("\n".join(current) + "\n")
                current = None
            elif current is not None:
                current.append(plain(line))
        return blocks


def line_text(line: str) -> str:
    if line.startswith('.\\"'):
        return ""
    if line.startswith("."):
        macro, _, arguments = line[1:].partition(" ")
        if macro in {"B", "I", *_ALTERNATING}:
            return _macro_text(macro, arguments)
        return ""  # .PP, .br, .EX, ...: layout only
    return plain(line)


def man_sections(page: str) -> dict[str, Section]:
    """The `.SH` sections of man/PAGE by name."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    for line in (MAN / page).read_text().splitlines():
        if line.startswith(".SH "):
            name = " ".join(shlex.split(line[4:]))
            current = sections[name] = Section(name, [])
        elif current is not None:
            current.lines.append(line)
    return sections


def man_version(page: str) -> str:
    header = next(line for line in (MAN / page).read_text().splitlines() if line.startswith(".TH"))
    source = shlex.split(header[4:])[3]  # "tportknockd 0.2.0"
    return source.split()[-1]


def normalized(text: str) -> str:
    """Lower case, single spaces, no markdown or roff emphasis: for comparing wording."""
    text = plain(text).replace("`", "").replace("**", "")
    return " ".join(text.lower().split())


def options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", text))


# --- markdown (the README and docs/) ---------------------------------------------------------


def markdown_section(path: Path, heading: str) -> str:
    """The body of a section of a markdown file, up to the next heading of level 1 or 2."""
    text = path.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert match, f"{path.relative_to(REPO)} has no section {heading!r}"
    return match.group(2)


def readme_section(heading: str) -> str:
    return markdown_section(REPO / "README.md", heading)


def code_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.M | re.S)


# --- the systemd unit ------------------------------------------------------------------------


def unit_settings(path: Path = UNIT, section: str = "Service") -> list[tuple[str, str]]:
    """(key, value) pairs of one section, in order (keys may repeat)."""
    pairs: list[tuple[str, str]] = []
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


def unit_value(key: str, path: Path = UNIT) -> str:
    values = [value for name, value in unit_settings(path) if name == key]
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def unit_capabilities(key: str, path: Path = UNIT) -> set[str]:
    return set(unit_value(key, path).split())


def syscall_group(name: str) -> set[str]:
    """The system calls of a systemd group such as @system-service, nested groups expanded."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    calls: set[str] = set()
    for line in listing.splitlines():
        word = line.strip()
        if not word or word.startswith("#") or word == name:
            continue
        calls |= syscall_group(word) if word.startswith("@") else {word}
    return calls


def unit_syscall_allowlist(path: Path = UNIT) -> set[str]:
    """What the unit's SystemCallFilter= lines allow, read as systemd reads them: the first
    line, without '~', starts an allow list; later lines add to it, or with '~' take away."""
    allowed: set[str] = set()
    lines = [value for key, value in unit_settings(path) if key == "SystemCallFilter"]
    assert lines and not lines[0].startswith("~"), "expected an allow list"
    for value in lines:
        negate = value.startswith("~")
        names: set[str] = set()
        for word in value.lstrip("~").split():
            names |= syscall_group(word) if word.startswith("@") else {word}
        allowed = allowed - names if negate else allowed | names
    return allowed


# --- staged installs -------------------------------------------------------------------------


def stage_install(destdir: Path, prefix: str = "/usr", action: str = "install",
                  **extra: str) -> subprocess.CompletedProcess[str]:
    """`packaging/install.sh ACTION` under DESTDIR, as `make install DESTDIR=...` runs it."""
    env = {**os.environ, "DESTDIR": str(destdir), "PREFIX": prefix, **extra}
    result = subprocess.run(["sh", str(INSTALL_SCRIPT), action], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def tree(root: Path) -> set[str]:
    """Every file, symlink and directory under root, as /absolute paths."""
    return {"/" + str(path.relative_to(root)) for path in root.rglob("*")}
