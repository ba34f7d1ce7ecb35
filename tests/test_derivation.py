"""One-time sequences, derivation v1: the issue's test vectors, an independent reading of the
spec, and the windows that are accepted."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from tportknockd.frame_syntax import format_frame, parse_kind
from tportknockd.model import OtpSpec
from tportknockd.onetime import derivation

KEY = b"correct horse battery staple 42"
DEFAULT_KINDS = tuple(parse_kind(k) for k in ("tcp:s", "udp"))


def spec(
    length: int = 4,
    kinds: str = "tcp:s udp",
    low: int = 20000,
    high: int = 59999,
    window: int = 30,
    key: bytes = KEY,
) -> OtpSpec:
    return OtpSpec(
        "ssh.key", key, length, low, high, tuple(parse_kind(k) for k in kinds.split()), window
    )


def spelled(frames: tuple) -> str:
    return " ".join(format_frame(f) for f in frames)


def test_vector_window_60000000() -> None:
    assert derivation.window_number(1800000000, 30) == 60000000
    assert spelled(derivation.derive(spec(), "ssh", 60000000)) == (
        "tcp:42623:s tcp:56501:s tcp:39078:s udp:26834"
    )


def test_vector_window_60000001() -> None:
    assert spelled(derivation.derive(spec(), "ssh", 60000001)) == (
        "tcp:23869:s tcp:20919:s udp:56065 udp:37222"
    )


def test_vector_six_frames_five_kinds() -> None:
    frames = derivation.derive(spec(6, "tcp:s tcp:a tcp:fu tcp:n udp"), "ssh", 60000000)
    assert spelled(frames) == (
        "udp:42623 udp:56501 tcp:39078:a tcp:26834:fu tcp:41463:s tcp:57890:fu"
    )


# An independent reading of the spec text, written from docs/otp-v1.md's wording: strings of
# kinds and ports, no shared helpers.
def reference(
    key: bytes, name: str, w: int, length: int, kinds: list[str], low: int, high: int
) -> list[str]:
    message = b"tportknock-otp-v1" + b"\x00" + name.encode() + b"\x00" + w.to_bytes(8, "big")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    n = high - low + 1
    out: list[tuple[str, int]] = []
    for i in range(length):
        v = int.from_bytes(digest[4 * i : 4 * i + 4], "big")
        port = low + v % n
        kind = kinds[(v // n) % len(kinds)]
        if out and out[-1] == (kind, port):
            port = low + ((port - low + 1) % n)
        out.append((kind, port))
    spelled_frames = []
    for kind, port in out:
        proto, _, flags = kind.partition(":")
        spelled_frames.append(f"{proto}:{port}:{flags}" if flags else f"{proto}:{port}")
    return spelled_frames


KIND_CHOICES = ["tcp:s", "tcp:a", "tcp:fu", "tcp:n", "tcp:x", "tcp:sa", "udp"]


@given(
    key=st.binary(min_size=16, max_size=64),
    name=st.text(min_size=1, max_size=12),
    w=st.integers(min_value=0, max_value=2**63),
    length=st.integers(min_value=derivation.MIN_LENGTH, max_value=derivation.MAX_LENGTH),
    kinds=st.lists(st.sampled_from(KIND_CHOICES), min_size=1, max_size=5, unique=True),
    low=st.integers(min_value=1, max_value=65534),
    width=st.integers(min_value=1, max_value=65534),
)
def test_derivation_matches_an_independent_reading(
    key: bytes, name: str, w: int, length: int, kinds: list[str], low: int, width: int
) -> None:
    high = min(65535, low + width)
    frames = derivation.derive(spec(length, " ".join(kinds), low, high, key=key), name, w)
    expected = reference(key, name, w, length, kinds, low, high)
    assert [format_frame(f) for f in frames] == expected
    # never the same frame twice in a row
    assert all(a != b for a, b in zip(frames, frames[1:], strict=False))
    assert all(low <= f.port <= high for f in frames)


@given(t=st.floats(min_value=0, max_value=4e9), window=st.integers(min_value=1, max_value=86400))
def test_accepted_windows_are_the_one_before_now_and_after(t: float, window: int) -> None:
    w = int(t // window)
    assert list(derivation.accepted_windows(t, window)) == [w - 1, w, w + 1]
    change = derivation.next_change(t, window)
    assert t < change <= t + window
    assert derivation.window_number(change, window) == w + 1


def test_a_different_event_name_or_secret_gives_another_sequence() -> None:
    base = derivation.derive(spec(), "ssh", 60000000)
    assert derivation.derive(spec(), "vpn", 60000000) != base
    assert derivation.derive(spec(key=KEY + b"!"), "ssh", 60000000) != base
