"""Interfaces and addresses over rtnetlink: readable without privileges."""

from __future__ import annotations

from tportknockd.capture import netif


def test_loopback_is_listed_with_its_addresses() -> None:
    lo = netif.find_interface("lo")
    assert lo is not None
    assert lo.index == 1 and "127.0.0.1" in lo.addresses
    assert lo.loopback and lo.framing == "ethernet"  # lo has an all-zero Ethernet header
    assert any(link.name == "lo" for link in netif.list_interfaces())


def test_unknown_interface_is_none() -> None:
    assert netif.find_interface("no-such-if0") is None


def test_change_watcher_has_nothing_to_say_when_nothing_changed() -> None:
    watcher = netif.ChangeWatcher()
    try:
        assert watcher.fileno() >= 0
        watcher.drain()  # whatever was announced before
        assert watcher.drain() is False
    finally:
        watcher.close()
