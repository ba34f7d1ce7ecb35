"""The README and docs/ stay true: links resolve, shown commands exist, the README stays short.

A renamed file, a removed make target or a command nobody ships fails here, not in front of a
reader. The one-time spec's test vectors are recomputed from the code, and the matching rules
that comments and docs cite by number must exist in tportknockd.conf(5). No root, no network.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from packaging_helpers import REPO, man_sections, normalized
from tportknockd.frame_syntax import format_frame, parse_kind
from tportknockd.model import OtpSpec
from tportknockd.onetime import derivation

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]
README_MAX_LINES = 350

#: What the project ships as commands (pyproject's scripts, and the module forms).
SHIPPED = {"tportknockd", "tportknock"}
#: Shell builtins a README line may start with; they are on no PATH.
BUILTINS = {"cd", "umask", "export", "set", "test", "[", "echo", "printf", "command", "."}
#: Programs of a Debian package that DEB_TOOLS installs for another of its commands
#: (DEB_TOOLS names systemd-analyze for the package systemd).
SAME_PACKAGE = {"systemd": {"systemctl", "journalctl"}}
#: The package manager of the Debian systems the README is written for.
DEBIAN_BASE = {"apt", "apt-get", "dpkg"}


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- links -----------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text())  # code is not prose: `a[i](x)` is no link
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = normalized(heading).replace(" ", "-")
    return re.sub(r"[^\w\- ]", "", text)


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.*)$", _FENCE.sub("", path.read_text()), re.M)
    return {_anchor(heading) for heading in headings}


@pytest.mark.parametrize("path", MARKDOWN, ids=_id)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for link in _links(path):
        if re.match(r"^[a-z]+:", link):  # https:, mailto: ...: not ours to check offline
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            broken.append(f"{link}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{link}: no heading with that anchor")
    assert not broken, f"{_id(path)}: {broken}"


def test_docs_are_linked_from_the_readme() -> None:
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _links(README)}
    assert {doc.resolve() for doc in DOCS} <= linked, "a doc nobody can find from the README"


def test_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


# --- commands --------------------------------------------------------------------------------


def _make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+):(?!=)", makefile, re.M))


def _deb_tools() -> dict[str, str]:
    """DEB_TOOLS of the Makefile: command → Debian package."""
    match = re.search(r"^DEB_TOOLS :=(.*?)(?<!\\)\n", (REPO / "Makefile").read_text(), re.M | re.S)
    assert match, "the Makefile has no DEB_TOOLS"
    pairs = match.group(1).replace("\\\n", " ").split()
    return dict(pair.split(":", 1) for pair in pairs)


def _sh_commands(markdown: str) -> list[str]:
    """The command lines of the ```sh blocks: with `$ ` prompts, only the prompted lines."""
    commands: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", markdown, re.M | re.S):
        lines = [line for line in block.splitlines() if line.strip()]
        if any(line.startswith(("$ ", "# ")) for line in lines):
            lines = [line[2:] for line in lines if line.startswith(("$ ", "# "))]
        commands.extend(lines)
    return commands


def _simple_commands(line: str) -> list[list[str]]:
    """A shell line cut at ; && || | into its simple commands, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {";", "&&", "||", "|", "&"}:
            commands.append([])
        else:  # redirections stay with their command: only its first word is checked
            commands[-1].append(token)
    return [command for command in commands if command]


def _program(words: list[str]) -> tuple[str, list[str]]:
    """The program a simple command runs, past sudo and VAR=value assignments."""
    while words and (words[0] == "sudo" or re.match(r"^[A-Za-z_]\w*=", words[0])):
        words = words[1:]
    assert words, "a command line with nothing to run"
    return words[0], words[1:]


def _problem(program: str, arguments: list[str]) -> str | None:
    if program == "make":
        targets = [word for word in arguments if "=" not in word and not word.startswith("-")]
        missing = set(targets[:1] or ["(default)"]) - _make_targets() - {"(default)"}
        return f"make has no target {missing}" if missing else None
    if program in {"python3", "python"} and arguments[:1] == ["-m"]:
        module = arguments[1]
        if module.split(".")[0] == "tportknockd":
            found = (REPO / "src" / module.replace(".", "/")).with_suffix(".py").exists() or (
                REPO / "src" / module.replace(".", "/") / "__main__.py"
            ).exists()
            return None if found else f"no module {module} in src/"
        return None
    if program in SHIPPED or program in BUILTINS or program in DEBIAN_BASE:
        return None
    if "/" in program and not program.startswith("/"):
        return None if (REPO / program).exists() else f"no {program} in the repository"
    tools = _deb_tools()
    if program in tools or any(program in SAME_PACKAGE.get(package, set())
                               for package in tools.values()):
        return None
    if shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin"):
        return None
    return f"{program}: not shipped, not a make target, not on PATH nor in DEB_TOOLS"


def test_every_readme_command_exists() -> None:
    commands = _sh_commands(README.read_text())
    assert any(line.startswith("make demo") for line in commands)
    assert any(line.startswith("make test") for line in commands)
    problems = []
    for line in commands:
        for words in _simple_commands(line):
            problem = _problem(*_program(words))
            if problem:
                problems.append(f"{line!r}: {problem}")
    assert not problems, problems


def test_the_command_check_catches_what_it_should() -> None:
    assert _problem("make", ["no-such-target"])
    assert _problem("make", ["test"]) is None
    assert _problem("make", ["fuzz", "PACKETS=20000"]) is None
    assert _problem("scripts/no-such-script.py", [])
    assert _problem("tportknockd-no-such-program", [])
    assert _program(["sudo", "CI=1", "make", "test"]) == ("make", ["test"])
    assert [w[0] for w in _simple_commands("umask 077; head -c 32 x | base64 > f # c")] == [
        "umask", "head", "base64"]
    assert _sh_commands("```sh\n$ tportknock x\noutput line\n```\n") == ["tportknock x"]


# --- the one-time spec -----------------------------------------------------------------------


def _vectors() -> list[tuple[int, int, str, str]]:
    text = (REPO / "docs" / "otp-v1.md").read_text()
    section = text.split("## Test vectors", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (\d) \| `([^`]+)` \| `([^`]+)` \|$", section, re.M)
    return [(int(w), int(length), kinds, sequence) for w, length, kinds, sequence in rows]


def test_spec_vectors_are_what_the_code_derives() -> None:
    vectors = _vectors()
    assert len(vectors) == 3
    for window, length, kinds, sequence in vectors:
        spec = OtpSpec("ssh.key", b"correct horse battery staple 42", length, 20000, 59999,
                       tuple(parse_kind(kind) for kind in kinds.split()), 30)
        frames = derivation.derive(spec, "ssh", window)
        assert " ".join(format_frame(frame) for frame in frames) == sequence
    assert derivation.window_number(1800000000, 30) == 60000000


# --- the matching rules live once ------------------------------------------------------------

_CITED = re.compile(r"rules? (\d+)(?: (?:to|and) (\d+))? of tportknockd\.conf\(5\)")


def test_matching_rules_are_written_once() -> None:
    rules = man_sections("tportknockd.conf.5")["MATCHING RULES"].items()
    assert len(rules) >= 8
    for path in MARKDOWN:
        assert not re.search(r"^#+ Matching rules", path.read_text(), re.M | re.I), (
            f"{_id(path)} restates the matching rules: link to tportknockd.conf(5) instead"
        )


def test_cited_rules_exist() -> None:
    count = len(man_sections("tportknockd.conf.5")["MATCHING RULES"].items())
    sources = [*MARKDOWN, *(REPO / "src").rglob("*.py")]
    cited = {int(number) for path in sources for match in _CITED.findall(path.read_text())
             for number in match if number}
    assert cited, "nothing cites the rules by number"
    assert cited <= set(range(1, count + 1)), f"cited rules that do not exist: {cited}"
