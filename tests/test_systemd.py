"""Telling systemd how the daemon is doing: one datagram on $NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from tportknockd.daemon.systemd import notify_systemd


def test_the_message_goes_to_the_socket_systemd_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert notify_systemd("READY=1")
        assert listener.recv(100) == b"READY=1"


def test_an_at_sign_names_the_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"tportknockd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify_systemd("STATUS=listening")
        assert listener.recv(100) == b"STATUS=listening"


@pytest.mark.parametrize("value", [None, ""])
def test_without_systemd_there_is_no_one_to_tell(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not notify_systemd("READY=1")


def test_a_socket_that_is_gone_is_a_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with caplog.at_level(logging.WARNING, logger="tportknockd"):
        assert not notify_systemd("READY=1")
    assert "cannot notify systemd" in caplog.text
