"""Hypothesis strategies for addresses: only the ranges test traffic may ever use."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

#: Documentation ranges, and 198.18.0.0/15 where spoofed sources are wanted.
DOCUMENTATION_V4 = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "203.0.113.0/24")]
SPOOFED_V4 = ipaddress.ip_network("198.18.0.0/15")
DOCUMENTATION_V6 = ipaddress.ip_network("2001:db8::/32")


@st.composite
def v4_addresses(draw: st.DrawFn, spoofed: bool = False) -> str:
    nets = [*DOCUMENTATION_V4, SPOOFED_V4] if spoofed else DOCUMENTATION_V4
    net = draw(st.sampled_from(nets))
    return str(net[draw(st.integers(0, net.num_addresses - 1))])


@st.composite
def v6_addresses(draw: st.DrawFn) -> str:
    return str(DOCUMENTATION_V6[draw(st.integers(0, DOCUMENTATION_V6.num_addresses - 1))])
