"""The command line's failure modes, as a user meets them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import child_env, daemon_argv

from netns import Pair

pytestmark = pytest.mark.e2e

BROKEN_CONFIG = """\
<ssh>
 sequence      = udp:1234 tcp:543:q
 timeout       = 10
 start_command = echo open %IP%
</ssh>
<vpn>
 sequence      = tcp:99999
 start_command = echo open %IP%
</vpn>
"""


def test_check_reports_every_error_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.conf"
    config.write_text(BROKEN_CONFIG)
    result = subprocess.run(daemon_argv("-C", str(config)), capture_output=True, text=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = re.findall(rf"^{re.escape(str(config))}:(\d+): .+$", output, re.MULTILINE)
    # The bad flag letter (line 2), the bad port (line 7) and vpn's missing timeout.
    assert {"2", "7"} <= set(lines), output
    assert len(lines) >= 3, output


def test_check_prints_every_event_of_a_good_config(tmp_path: Path) -> None:
    config = tmp_path / "good.conf"
    config.write_text(BROKEN_CONFIG.replace("tcp:543:q", "tcp:543:s")
                      .replace("tcp:99999", "tcp:9999\n timeout = 5"))
    result = subprocess.run(daemon_argv("-C", str(config)), capture_output=True, text=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "ssh" in result.stdout and "vpn" in result.stdout
    assert "tcp/543 SYN" in result.stdout


def test_unknown_interface_is_one_clear_line(tmp_path: Path, pair: Pair) -> None:
    config = tmp_path / "knock.conf"
    config.write_text("<ssh>\n sequence = udp:1234\n timeout = 5\n start_command = true\n"
                      "</ssh>\n")
    result = pair.run(pair.server, daemon_argv("-c", str(config), "-i", "nosuchdev"),
                      capture_output=True, env=child_env(), timeout=30)
    assert result.returncode == 1
    # The log's first line (the version), then the one line that says what is wrong.
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 2 and " starting: " in lines[0], lines
    assert lines[1].startswith("tportknockd: ") and "nosuchdev" in lines[1]
