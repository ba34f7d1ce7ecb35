"""The systemd unit, as systemd's own tools judge it (no running systemd needed), and the files
it reads: /etc/default/tportknockd and the shipped /etc/tportknockd.conf."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from packaging_helpers import (
    FULL_ROOT_DROPIN,
    REPO,
    UNIT,
    markdown_section,
    require_tool,
    stage_install,
    unit_capabilities,
    unit_settings,
    unit_value,
)
from tportknockd.cli import main

#: The most `systemd-analyze security` may rate the unit (0 locked down ... 10 unsafe).
EXPOSURE_TARGET = 2.0
CAPABILITIES = {"CAP_NET_RAW", "CAP_BPF", "CAP_NET_ADMIN"}
#: Settings of the unit that say how to run the daemon, not what to take away from it.
OPERATIONAL = {
    "Type", "NotifyAccess", "Environment", "EnvironmentFile", "ExecStart", "ExecReload",
    "Restart", "RestartSec", "TimeoutStopSec", "KillMode", "StateDirectory",
    "StateDirectoryMode",
}


def exposure(unit: Path) -> tuple[float, str]:
    analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), result.stdout


def test_exposure_is_at_most_two() -> None:
    figure, report = exposure(UNIT)
    print(f"systemd-analyze security --offline=true: exposure {figure}")
    kept = [line for line in report.splitlines() if line.startswith("✗")]
    assert figure <= EXPOSURE_TARGET, "\n".join(kept)


def test_unit_verifies_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit as installed (staged: ExecStart must exist)."""
    analyze = require_tool("systemd-analyze", "systemd")
    require_tool("man", "man-db")  # verify looks the Documentation= pages up
    stage = tmp_path / "root"
    stage_install(stage)
    installed = stage / "lib/systemd/system/tportknockd.service"
    unit = tmp_path / "tportknockd.service"
    unit.write_text(installed.read_text().replace("/usr/sbin/", f"{stage}/usr/sbin/"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MANPATH": str(stage / "usr/share/man")}
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unprivileged_user_with_three_ambient_capabilities() -> None:
    assert unit_value("User") == unit_value("Group") == "tportknockd"
    assert unit_capabilities("AmbientCapabilities") == CAPABILITIES
    assert unit_capabilities("CapabilityBoundingSet") == CAPABILITIES
    assert unit_value("NoNewPrivileges") == "yes"
    assert unit_value("ProtectSystem") == "strict"


def test_a_notify_service_that_keeps_its_state_and_restarts() -> None:
    assert unit_value("Type") == "notify"  # the daemon calls sd_notify (daemon/systemd.py)
    assert " -D" not in unit_value("ExecStart")  # in the foreground, as Type=notify wants
    assert unit_value("StateDirectory") == "tportknockd"  # the state file of open doors
    assert unit_value("Restart") == "on-failure"


def test_full_root_dropin_undoes_every_restriction(tmp_path: Path) -> None:
    restrictions = {key for key, _ in unit_settings()} - OPERATIONAL
    relaxed = {key for key, _ in unit_settings(FULL_ROOT_DROPIN)}
    assert restrictions <= relaxed, f"the drop-in leaves {restrictions - relaxed} as it is"
    # With the drop-in beside it (systemd reads NAME.service.d/*.conf), the unit is unconfined.
    shutil.copy(UNIT, tmp_path / "tportknockd.service")
    (tmp_path / "tportknockd.service.d").mkdir()
    shutil.copy(FULL_ROOT_DROPIN, tmp_path / "tportknockd.service.d" / "full-root.conf")
    figure, _ = exposure(tmp_path / "tportknockd.service")
    assert figure > 9


def test_docs_show_the_dropin_as_shipped() -> None:
    settings = "\n".join(line for line in FULL_ROOT_DROPIN.read_text().splitlines()
                         if not line.startswith("#"))
    assert settings in markdown_section(REPO / "docs" / "failing-closed.md",
                                        "Running under systemd")


def test_defaults_file_sets_what_execstart_uses() -> None:
    used = set(re.findall(r"\$\{?(\w+)\}?", unit_value("ExecStart"))) - {"MAINPID"}
    assert used == {"INTERFACE", "OPTIONS"}
    defaults = REPO / "packaging" / "tportknockd.default"
    printed = subprocess.run(
        ["sh", "-c", f'. "{defaults}" && printf "%s|%s" "$INTERFACE" "$OPTIONS"'],
        capture_output=True, text=True, check=True,
    ).stdout
    interface, options = printed.split("|")
    assert interface and not options


def test_shipped_config_passes_the_check_without_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["-C", str(REPO / "packaging" / "tportknockd.conf")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "1 event OK" in out
    # Safe as shipped: the only event opens nothing.
    assert "start_command: echo " in out and "stop_command:  none" in out
