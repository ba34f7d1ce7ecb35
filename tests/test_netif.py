"""Interfaces and addresses over rtnetlink: readable without privileges."""

from __future__ import annotations

from tportknockd.capture import netif


def test_loopback_is_listed_with_its_addresses() -> None:
    (lo,) = [link for link in netif.list_interfaces() if link.name == "lo"]
    assert lo.index == 1 and "127.0.0.1" in lo.addresses
    assert lo.loopback and lo.framing == "ethernet"  # lo has an all-zero Ethernet header


def test_interfaces_come_in_index_order_each_once() -> None:
    indexes = [link.index for link in netif.list_interfaces()]
    assert indexes == sorted(set(indexes))


def test_change_watcher_has_nothing_to_say_when_nothing_changed() -> None:
    watcher = netif.ChangeWatcher()
    try:
        assert watcher.fileno() >= 0
        watcher.drain()  # whatever was announced before
        assert watcher.drain() is False
    finally:
        watcher.close()
