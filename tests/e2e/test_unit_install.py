"""Installing for real, as an administrator does: the .deb (`apt install
./dist/tportknockd_*.deb`, man pages, the shipped config, the installed daemon running as the
package's user the way the unit runs it, then remove and purge) and `make install` from the
checkout (then `make uninstall`, with and without PURGE=yes). Afterwards nothing of either is
left on the machine.

This changes the machine while it runs (a package or files in /usr/local, a system user); it
leaves it as it found it, and a package left installed by an interrupted run is purged first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonRun
from test_unit_confinement import unit_setpriv

from netns import CLIENT_V4, SERVER_V4, Pair
from packaging_helpers import BUILD_SCRIPT, REPO, require_tool
from privileges import NAMESPACES, require_root
from tportknockd import __version__
from tportknockd.config import format_frame, load_config

# It installs and purges the package system-wide and searches the whole machine for traces:
# never beside another test that changes the machine (make test runs tests on two workers).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("machine")]

PACKAGE = "tportknockd"
USER = "tportknockd"
#: Where a file of the package could be left behind (/lib and /bin are links into /usr).
SEARCHED = ["/etc", "/usr", "/var", "/opt", "/srv"]
#: man-db's cache of formatted pages (`man` and `systemd-analyze verify` fill it; its cron job
#: expires it): not the package's, but the tests clean up what they put there.
MAN_CACHE = "/var/cache/man"
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}")
    return result


#: Removing the package (and make uninstall) removes the daemon's nftables table: run there,
#: it would reach into this machine's own ruleset. So those steps run in a network namespace
#: of the test's own, where the table they remove is only ever the namespace's.
ISOLATED = f"tpk-u-{uuid.uuid4().hex[:8]}"


def _isolated(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", ISOLATED, *argv]


@contextlib.contextmanager
def _isolation() -> Iterator[None]:
    _sh("ip", "netns", "add", ISOLATED)
    try:
        yield
    finally:
        _sh("ip", "netns", "delete", ISOLATED, check=False)


def _give_the_namespace_a_door_table() -> None:
    """What a daemon with doors leaves behind, in the test's namespace."""
    _sh(*_isolated("nft", "add", "table", "inet", "tportknockd"))


def _door_table_in_the_namespace() -> bool:
    return "tportknockd" in _sh(*_isolated("nft", "list", "tables")).stdout


def _package_status() -> str:
    result = _sh("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False)
    return result.stdout if result.returncode == 0 else "not known"


def _traces() -> set[str]:
    """Every path on the machine with the package's name in it, but for man-db's cache."""
    found = _sh("find", *SEARCHED, "-xdev", "-path", MAN_CACHE, "-prune", "-o",
                "-name", "*tportknock*", "-print", check=False)
    return set(found.stdout.split())


def _man_cache() -> set[Path]:
    return set(Path(MAN_CACHE).glob("**/cat*/*tportknock*"))


#: The daemon's default state directory: a daemon run by hand before the test (with its
#: default --state-file) leaves it behind, with nothing of the package in it. Purging the
#: package removes it, so the test puts it aside for its run and back afterwards, under a
#: name that is not one of the package's traces.
STATE_DIR = Path("/var/lib/tportknockd")
STATE_ASIDE = Path("/var/lib/.tpk-test-state-put-aside")


def _restore_state_dir() -> None:
    if STATE_ASIDE.exists():
        if STATE_DIR.exists():
            shutil.rmtree(STATE_DIR)
        STATE_ASIDE.rename(STATE_DIR)


#: Held while a test changes the machine: another run of the suite on the same machine (a
#: second checkout, a second xdist worker in another --dist mode) waits its turn.
MACHINE_LOCK = Path("/run/lock/tpk-tests-machine.lock")


@contextlib.contextmanager
def _machine_lock(timeout: float = 900) -> Iterator[None]:
    with open(MACHINE_LOCK, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{MACHINE_LOCK} still held after {timeout:.0f} s")
                time.sleep(0.1)  # polling a lock another run holds
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def clean_machine() -> Iterator[set[str]]:
    """The package's traces before the test (normally none; a state directory left by the
    daemon is put aside for the test's run); afterwards, man-db's cache loses the pages the
    test formatted. The machine is the test's alone meanwhile (MACHINE_LOCK)."""
    require_root(NAMESPACES)
    with _machine_lock(), _isolation():
        yield from _clean_machine()


def _clean_machine() -> Iterator[set[str]]:
    if _package_status() != "not known":
        _sh(*_isolated(*APT, "purge", PACKAGE))  # left over from an interrupted run
    _restore_state_dir()  # put aside by an interrupted run
    if STATE_DIR.exists():
        STATE_DIR.rename(STATE_ASIDE)
    cached = _man_cache()
    try:
        yield _traces()
    finally:
        if _package_status() != "not known":
            _sh(*_isolated(*APT, "purge", PACKAGE), check=False)
        for page in _man_cache() - cached:
            page.unlink()
        _restore_state_dir()


def _user_exists() -> bool:
    return _sh("getent", "passwd", USER, check=False).returncode == 0


@pytest.fixture
def deb(clean_machine: set[str], tmp_path: Path) -> Path:
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("man", "man-db")):
        require_tool(tool, package)
    built = _sh("sh", str(BUILD_SCRIPT), str(tmp_path))
    return Path(built.stdout.strip())


def _mode(path: str) -> tuple[str, str, int]:
    info = os.stat(path)
    return (pwd.getpwuid(info.st_uid).pw_name, _group(info.st_gid), stat.S_IMODE(info.st_mode))


def _group(gid: int) -> str:
    return _sh("getent", "group", str(gid)).stdout.split(":")[0]


def _check_installed() -> None:
    version = _sh("tportknockd", "--version")
    assert version.stdout == f"tportknockd {__version__}\n"
    check = _sh("tportknockd", "-C", "/etc/tportknockd.conf")
    assert check.stderr == "" and "1 event OK" in check.stdout
    for page in (["tportknockd"], ["tportknockd.conf"], ["1", "tportknock"]):
        assert _sh("man", "-w", *page).stdout.startswith("/usr/share/man/")
    shown = _sh("man", "-P", "cat", "tportknockd.conf").stdout
    assert "MATCHING RULES" in shown
    assert Path("/usr/share/doc/tportknockd/README.md").exists()
    assert Path("/usr/share/doc/tportknockd/examples/door-nft").exists()
    # The package's user, and what it owns.
    user = pwd.getpwnam(USER)
    assert user.pw_uid < 1000 and user.pw_shell == "/usr/sbin/nologin"
    assert _mode("/etc/tportknockd.conf") == ("root", USER, 0o640)
    assert _mode("/var/lib/tportknockd") == (USER, USER, 0o700)
    # systemd's own checks of the unit as installed.
    verify = _sh("systemd-analyze", "verify", "/lib/systemd/system/tportknockd.service")
    assert verify.stdout + verify.stderr == ""


def _run_as_the_unit(pair: Pair, tmp_path: Path) -> None:
    """The installed daemon, as its user with the unit's capabilities, on the shipped config:
    the example event answers a knock and opens nothing."""
    config = load_config("/etc/tportknockd.conf")
    frames = [format_frame(frame) for frame in config.events[0].frames]
    user = pwd.getpwnam(USER)
    run = DaemonRun(pair, tmp_path, Path("/etc/tportknockd.conf"), tmp_path / "daemon.log",
                    tmp_path / "unused")
    argv = [*unit_setpriv(user.pw_uid, user.pw_gid), "/usr/sbin/tportknockd",
            "-c", "/etc/tportknockd.conf", "-i", pair.server_if]
    with open(run.log, "w") as log:
        run.proc = pair.popen(pair.server, argv, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, env={"PATH": ENV["PATH"]})
    run.pid = run.proc.pid
    try:
        first = run.wait_log(r"tportknockd \S+ starting")
        assert run.log_text().splitlines()[0] == first and __version__ in first
        run.wait_log(r"ready: 1 event")
        run.knock(SERVER_V4, *frames)
        run.wait_log(rf"knocked by {re.escape(CLIENT_V4)}, nothing opened")
        run.signal(signal.SIGTERM)
        assert run.wait_exit() == 0
        # Its default state file, in the package's state directory, written as its user.
        assert _mode("/var/lib/tportknockd/doors.json")[0] == USER
    finally:
        run.kill()


def test_install_check_remove_purge_leaves_nothing_behind(
    deb: Path, clean_machine: set[str], pair: Pair, tmp_path: Path
) -> None:
    before = clean_machine
    user_before = _user_exists()

    _sh(*APT, "install", str(deb))
    assert _package_status() == "install ok installed"
    owned = set(_sh("dpkg", "-L", PACKAGE).stdout.split())
    _check_installed()
    _run_as_the_unit(pair, tmp_path)

    _give_the_namespace_a_door_table()
    _sh(*_isolated(*APT, "remove", PACKAGE))
    assert not _door_table_in_the_namespace(), "removing the package left the door table"
    conffiles = {"/etc/tportknockd.conf", "/etc/default/tportknockd"}
    left = _traces() - before
    assert conffiles <= left and not (owned - conffiles - {"/var/lib/tportknockd"}) & left, left
    assert not Path("/usr/lib/python3/dist-packages/tportknockd").exists()

    _sh(*_isolated(*APT, "purge", PACKAGE))
    assert _package_status() == "not known"
    assert _traces() == before, f"left behind: {_traces() - before}"
    assert _user_exists() == user_before
    assert USER not in _sh("dpkg-statoverride", "--list").stdout


def test_make_install_then_uninstall_leaves_nothing_behind(clean_machine: set[str]) -> None:
    before = clean_machine
    user_before = _user_exists()
    make = ["make", "-C", str(REPO), "--no-print-directory"]
    _sh(*make, "install")
    version = _sh("/usr/local/sbin/tportknockd", "--version")
    assert version.stdout == f"tportknockd {__version__}\n"
    user = pwd.getpwnam(USER)
    assert _mode("/etc/tportknockd.conf") == ("root", USER, 0o640)
    assert _mode("/var/lib/tportknockd") == (USER, USER, 0o700)
    # The daemon's user reads the config, with the system's Python.
    as_user = _sh("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                  "--clear-groups", "/usr/local/sbin/tportknockd", "-C", "/etc/tportknockd.conf")
    assert "1 event OK" in as_user.stdout
    assert _sh("man", "-w", "tportknockd.conf").stdout.strip().endswith("tportknockd.conf.5.gz")
    unit = "/usr/local/lib/systemd/system/tportknockd.service"
    assert "ExecStart=/usr/local/sbin/tportknockd " in Path(unit).read_text()
    verify = _sh("systemd-analyze", "verify", unit)
    assert verify.stdout + verify.stderr == ""

    _give_the_namespace_a_door_table()
    _sh(*_isolated(*make, "uninstall"))
    assert not _door_table_in_the_namespace(), "make uninstall left the door table"
    assert _traces() - before == {"/etc/tportknockd.conf", "/etc/default/tportknockd"}
    assert _user_exists()
    _sh(*_isolated(*make, "uninstall", "PURGE=yes"))
    assert _traces() == before
    assert _user_exists() == user_before
