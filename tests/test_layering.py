"""The package's layers: each part imports only the parts below it (test_startup_imports.py
checks what the daemon's start-up loads; this checks what every module may import at all).

A part is a subpackage (bpf, capture, ...) or a top-level module. Imports inside a function
and under TYPE_CHECKING count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tportknockd"

#: What each part may import of the package, besides itself. The pure core (model, frame
#: syntax, onetime, matching) is at the bottom, the command line at the top.
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "files": set(),
    "frame_syntax": {"model"},
    "bpf": set(),
    "onetime": {"model", "frame_syntax", "files"},
    "matching": {"model", "frame_syntax", "onetime"},
    "config": {"model", "frame_syntax", "onetime"},
    "capture": {"model", "bpf", "matching"},
    "kernel": {"model", "bpf", "capture", "matching"},
    "firewall": {"model"},
    "daemon": {"model", "files", "frame_syntax", "bpf", "onetime", "matching", "config",
               "capture", "kernel", "firewall"},
    "needs_linux": set(),
    "cli": {"needs_linux", "model", "frame_syntax", "capture", "matching", "config", "daemon",
            "firewall"},
    "client": {"model", "files", "frame_syntax", "onetime", "config"},
    "__init__": set(),
    "__main__": {"cli"},
}  # fmt: skip

#: Modules that Windows lacks (fcntl, termios, pwd, grp, resource), and ctypes, which the
#: daemon uses only to call into libc.
LINUX_ONLY = {"fcntl", "ctypes", "termios", "pwd", "grp", "resource"}


def part_of(module: str) -> str:
    """`tportknockd.capture.ring` → `capture`; `tportknockd.cli` → `cli`."""
    return module.split(".")[1] if module.count(".") >= 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts) if len(parts) > 1 else "tportknockd.__init__"


def imported_parts(path: Path) -> set[str]:
    """The package's parts that `path` imports, by any import statement anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tportknockd":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("tportknockd."):
                found.add(part_of(node.module))
        elif isinstance(node, ast.Import):
            found.update(
                part_of(alias.name) for alias in node.names
                if alias.name.startswith("tportknockd.")
            )  # fmt: skip
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_its_rule() -> None:
    parts = {part_of(module_name(path)) for path in MODULES}
    assert parts == set(ALLOWED), parts ^ set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_from_below(path: Path) -> None:
    own = part_of(module_name(path))
    upward = imported_parts(path) - ALLOWED[own] - {own, "__version__"}
    assert not upward, f"{path.relative_to(PACKAGE)} ({own}) imports {sorted(upward)}"


def test_the_rules_have_no_cycle() -> None:
    """Below means below: no part may reach itself through the others."""
    for start in ALLOWED:
        seen: set[str] = set()
        stack = list(ALLOWED[start])
        while stack:
            part = stack.pop()
            assert part != start, f"{start} can reach itself"
            if part not in seen:
                seen.add(part)
                stack.extend(ALLOWED[part])


def test_a_module_that_imports_upward_is_caught(tmp_path: Path) -> None:
    module = tmp_path / "engine.py"
    module.write_text("def f():\n    from tportknockd.daemon import loop\n")
    assert imported_parts(module) == {"daemon"}


def test_the_client_loads_nothing_linux_only() -> None:
    """The knock client runs on any system: what importing it adds to a fresh interpreter."""
    bare = modules_after("pass")
    loaded = modules_after("import tportknockd.client")
    assert "tportknockd.client" in loaded
    added = loaded - bare
    assert not added & LINUX_ONLY, sorted(added & LINUX_ONLY)
    own = {part_of(name) for name in loaded if name.startswith("tportknockd.")}
    assert own <= ALLOWED["client"] | {"client"}, sorted(own)


def modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    return set(
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )


#: Socket attributes only Linux has; no module the client loads may even name one.
LINUX_ONLY_SOCKET = {"AF_PACKET", "AF_NETLINK", "SO_BINDTODEVICE", "SOCK_CLOEXEC",
                     "SOCK_NONBLOCK", "SO_ATTACH_FILTER", "SO_ATTACH_BPF", "PACKET_OUTGOING"}


def client_modules() -> list[Path]:
    parts = ALLOWED["client"] | {"client"}
    return [path for path in MODULES if part_of(module_name(path)) in parts]


@pytest.mark.parametrize("path", client_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_client_module_names_anything_linux_only(path: Path) -> None:
    """Static, so that an import inside a function (which test_the_client_loads_nothing_linux_only
    cannot see) or a Linux-only constant cannot slip in either (tests/test_client_portable.py
    runs the client as on macOS and Windows)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
            if node.module == "socket":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute) and node.attr in LINUX_ONLY_SOCKET:
            found.add(node.attr)
    assert not found & (LINUX_ONLY | LINUX_ONLY_SOCKET), sorted(found & (LINUX_ONLY |
                                                                        LINUX_ONLY_SOCKET))


def test_the_client_parts_are_these() -> None:
    """Widening what the client may import needs a look at test_client_portable.py too."""
    assert ALLOWED["client"] == {"model", "files", "frame_syntax", "onetime", "config"}
