"""What `-i` selects: interfaces by name, or `any`.

`-i` names interfaces (`-i eth0,wg0`, `-i eth0 -i wg0`) or says `any`: every interface but the
loopback, present and future, each listened on once it is up, as long as its packets are
Ethernet frames or bare IP (other link types carry no knocks the filter could read).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

from tportknockd.capture import netif

ANY = "any"


@dataclass(frozen=True)
class Selection:
    """The interfaces to listen on: some by name, or every one but the loopback (`any`)."""

    names: tuple[str, ...] = ()
    every: bool = False

    @classmethod
    def parse(cls, values: Iterable[str]) -> Selection:
        """From the -i values, each a comma-separated list; ValueError when they make no sense."""
        names: list[str] = []
        for value in values:
            for name in (part.strip() for part in value.split(",")):
                if not name:
                    raise ValueError(f"-i {value!r}: an empty interface name")
                if name not in names:
                    names.append(name)
        if not names:
            raise ValueError("-i: no interface named")
        if ANY in names:
            if len(names) > 1:
                raise ValueError("-i any already means every interface: name no others with it")
            return cls(every=True)
        return cls(tuple(names))

    def listens_on(self, link: netif.Interface) -> bool:
        """Is `link` one to open a capture on now? (`any`: once it is up, never loopback,
        and only links that carry IP in a way the filter knows: Ethernet or raw IP.)"""
        if self.every:
            return link.up and not link.loopback and link.framing is not None
        return link.name in self.names

    def counts_addresses_of(self, link: netif.Interface) -> bool:
        """Do packets to `link`'s addresses count (on whichever listened interface)?"""
        return self.every or link.name in self.names

    def describe(self) -> str:
        return "every interface but the loopback" if self.every else ", ".join(self.names)


def any_would_listen_on(links: Collection[netif.Interface]) -> tuple[list[str], list[str]]:
    """For -l: the interfaces `-i any` listens on now, and those it will once they are up."""
    every = Selection(every=True)
    now = [link.name for link in links if every.listens_on(link)]
    later = [
        link.name for link in links if not link.up and every.listens_on(replace(link, up=True))
    ]
    return now, later
