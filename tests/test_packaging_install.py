"""`make install` / `make uninstall` under DESTDIR, and the .deb that `make deb` builds from the
same staged tree: its contents, its control data, and what lintian says of it. (Installing
the .deb for real, as root, is tests/e2e/test_unit_install.py.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from packaging_helpers import BUILD_SCRIPT, REPO, SYSTEM_PYTHON, require_tool, stage_install, tree
from tportknockd import __version__

#: What the issue asks the package to install, and what `make install` puts in place.
PACKAGED = {
    "/usr/lib/python3/dist-packages/tportknockd/cli.py",
    "/usr/lib/python3/dist-packages/tportknockd/__main__.py",
    "/usr/sbin/tportknockd",
    "/usr/bin/tportknock",
    "/lib/systemd/system/tportknockd.service",
    "/etc/tportknockd.conf",
    "/etc/default/tportknockd",
    "/var/lib/tportknockd",
    "/usr/share/man/man8/tportknockd.8.gz",
    "/usr/share/man/man5/tportknockd.conf.5.gz",
    "/usr/share/man/man1/tportknock.1.gz",
    "/usr/share/doc/tportknockd/README.md",
    *(f"/usr/share/doc/tportknockd/docs/{doc.name}" for doc in (REPO / "docs").glob("*.md")),
    "/usr/share/doc/tportknockd/examples/knock.conf",
    "/usr/share/doc/tportknockd/examples/knock.nft",
    "/usr/share/doc/tportknockd/examples/door-nft",
    "/usr/share/doc/tportknockd/examples/full-root.conf",
}
CONFIGURATION = {"/etc/tportknockd.conf", "/etc/default/tportknockd"}


def _files(root: Path) -> set[str]:
    return {path for path in tree(root) if not (root / path[1:]).is_dir()}


def _run_installed(stage: Path, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(stage / "usr/lib/python3/dist-packages")}
    return subprocess.run([str(stage / program.lstrip("/")), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_install_puts_every_file_in_place(tmp_path: Path) -> None:
    stage_install(tmp_path)
    assert tree(tmp_path) >= PACKAGED, PACKAGED - tree(tmp_path)
    source = REPO / "src" / "tportknockd"
    modules = {str(path.relative_to(source)) for path in source.rglob("*.py")}
    target = tmp_path / "usr/lib/python3/dist-packages/tportknockd"
    installed = {str(path.relative_to(target)) for path in target.rglob("*") if path.is_file()}
    assert installed == modules  # and no byte code: the package compiles it where it runs
    version = _run_installed(tmp_path, "/usr/sbin/tportknockd", "--version")
    assert version.stdout == f"tportknockd {__version__}\n", version.stderr
    client = _run_installed(tmp_path, "/usr/bin/tportknock", "-h")
    assert client.returncode == 0 and client.stdout.startswith("usage: tportknock")
    # The programs run on the system's Python, not on the interpreter of a virtualenv.
    assert (tmp_path / "usr/sbin/tportknockd").read_text().startswith(f"#!{SYSTEM_PYTHON}\n")


def test_uninstall_keeps_configuration_unless_purged(tmp_path: Path) -> None:
    stage_install(tmp_path)
    stage_install(tmp_path, action="uninstall")
    assert _files(tmp_path) == CONFIGURATION
    stage_install(tmp_path, action="uninstall", PURGE="yes")
    assert _files(tmp_path) == set()


def test_another_prefix_reaches_the_unit_and_the_programs(tmp_path: Path) -> None:
    stage_install(tmp_path, prefix="/opt/tpk")
    unit = (tmp_path / "opt/tpk/lib/systemd/system/tportknockd.service").read_text()
    assert "ExecStart=/opt/tpk/sbin/tportknockd -c /etc/tportknockd.conf" in unit
    launcher = (tmp_path / "opt/tpk/sbin/tportknockd").read_text()
    # /opt/tpk is not on the system Python's path: the launcher says where the package is.
    assert "sys.path.insert(0, '/opt/tpk/lib/python3." in launcher
    assert (tmp_path / "etc/tportknockd.conf").exists()


def test_usr_local_needs_no_path_hack(tmp_path: Path) -> None:
    stage_install(tmp_path, prefix="/usr/local")
    assert "sys.path" not in (tmp_path / "usr/local/sbin/tportknockd").read_text().replace(
        "import sys\n", "").replace("sys.exit", "")


# --- the .deb ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_tool("dpkg-deb", "dpkg")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(["sh", str(BUILD_SCRIPT), str(out)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    path = Path(result.stdout.strip())
    assert path == out / f"tportknockd_{__version__}_all.deb"
    yield path


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_deb_holds_what_make_install_installs(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "deb")], check=True)
    stage_install(tmp_path / "staged")
    extra = tree(tmp_path / "deb") - tree(tmp_path / "staged")
    assert extra == {"/usr/share/doc/tportknockd/copyright",
                     "/usr/share/doc/tportknockd/changelog.gz"}
    assert tree(tmp_path / "staged") <= tree(tmp_path / "deb")


def test_deb_control_data(deb: Path, tmp_path: Path) -> None:
    assert _deb_field(deb, "Package") == "tportknockd"
    assert _deb_field(deb, "Version") == __version__
    assert _deb_field(deb, "Architecture") == "all"
    assert "python3" in _deb_field(deb, "Depends") and "adduser" in _deb_field(deb, "Depends")
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "control")], check=True)
    conffiles = set((tmp_path / "control" / "conffiles").read_text().split())
    assert conffiles == CONFIGURATION
    for script in ("postinst", "prerm", "postrm"):
        mode = (tmp_path / "control" / script).stat().st_mode & 0o777
        assert mode == 0o755, script
        check = subprocess.run(["sh", "-n", str(tmp_path / "control" / script)])
        assert check.returncode == 0, script


def test_deb_is_reproducible(deb: Path, tmp_path: Path) -> None:
    again = subprocess.run(["sh", str(BUILD_SCRIPT), str(tmp_path)], capture_output=True,
                           text=True, timeout=300, check=True)
    assert Path(again.stdout.strip()).read_bytes() == deb.read_bytes()


def test_lintian_finds_no_error_and_no_warning(deb: Path) -> None:
    lintian = require_tool("lintian", "lintian")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    result = subprocess.run([lintian, "--pedantic", "--display-info", str(deb)],
                            capture_output=True, text=True, env=env, timeout=600)
    tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "I:", "P:")]
    print("lintian:", "\n".join(tags) or "nothing to say")
    assert not [tag for tag in tags if tag[:2] in ("E:", "W:")], result.stdout
    # The one note kept: no init.d script; the package supports systemd only, on purpose.
    assert all("package-supports-alternative-init-but-no-init.d-script" in tag
               for tag in tags), tags
