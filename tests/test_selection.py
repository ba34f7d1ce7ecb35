"""What -i selects: names, lists, repeats, `any`, and what `any` would listen on."""

from __future__ import annotations

import pytest

from tportknockd.capture import netif
from tportknockd.capture.selection import Selection, any_would_listen_on

ARPHRD_NONE, ARPHRD_CAN = 0xFFFE, 280


@pytest.mark.parametrize(
    "values, names",
    [
        (["knk0"], ("knk0",)),
        (["knk0,knk2"], ("knk0", "knk2")),
        (["knk0", "knk2"], ("knk0", "knk2")),
        (["knk0, knk2", "knk0", "lo"], ("knk0", "knk2", "lo")),
    ],
)
def test_i_takes_lists_and_repeats(values: list[str], names: tuple[str, ...]) -> None:
    assert Selection.parse(values) == Selection(names)


@pytest.mark.parametrize(
    "values, message",
    [
        (["knk0,"], "an empty interface name"),
        (["any,knk0"], "-i any already means every interface"),
        (["knk0", "any"], "-i any already means every interface"),
    ],
)
def test_i_mistakes(values: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Selection.parse(values)


def test_any_is_every_interface_up_but_the_loopback() -> None:
    every = Selection.parse(["any", "any"])
    assert every == Selection(every=True)
    assert every.listens_on(netif.Interface("knk0", 5, True, "up"))
    assert not every.listens_on(netif.Interface("knk0", 5, False, "down"))
    assert not every.listens_on(netif.Interface("lo", 1, True, "unknown", loopback=True))
    assert Selection(("lo",)).listens_on(netif.Interface("lo", 1, True, "unknown", loopback=True))


def test_what_any_would_listen_on() -> None:
    links = [
        netif.Interface("lo", 1, True, "unknown", loopback=True),
        netif.Interface("knk0", 5, True, "up"),
        netif.Interface("knk2", 6, False, "down"),
        netif.Interface("wg0", 7, True, "unknown", link_type=ARPHRD_NONE),
        netif.Interface("can0", 8, True, "unknown", link_type=ARPHRD_CAN),
        netif.Interface("can1", 9, False, "down", link_type=ARPHRD_CAN),
    ]
    assert any_would_listen_on(links) == (["knk0", "wg0"], ["knk2"])


def test_described_for_the_log() -> None:
    assert Selection.parse(["knk0,knk2"]).describe() == "knk0, knk2"
    assert Selection.parse(["any"]).describe() == "every interface but the loopback"
