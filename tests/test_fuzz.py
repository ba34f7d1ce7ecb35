"""The fuzzer itself (scripts/fuzzing/): it finds what it is there to find, and its plumbing
(time, the parsers' probes, the config property) does what it says."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

import frames_raw as fr
from privileges import BPF, require_root
from scripts.fuzzing import configs, crosscheck, paths
from scripts.fuzzing.crosscheck import CrossCheck, Tally, run_stream
from scripts.fuzzing.frames import LOCAL, SERVER_V4, FrameMaker, Step
from scripts.fuzzing.streams import stream
from tportknockd.config import ConfigError, parse_config
from tportknockd.kernel.matcher import Capacity, KernelMatcher
from tportknockd.model import PROTO_TCP, PROTO_UDP, Frame

THREE = "<e0>\n sequence = udp:1 tcp:2:s udp:3\n timeout = 1.5\n start_command = true\n</e0>\n"
KNOCKER = "198.51.100.8"


@pytest.fixture(scope="module")
def matcher() -> Iterator[KernelMatcher]:
    require_root(BPF)
    m = KernelMatcher(Capacity(fresh_attempts=4096, advanced_attempts=1024))
    yield m
    m.close()


def knock_steps(source: str, dts: tuple[int, int, int]) -> list[Step]:
    ports = ((fr.UDP, 1, 0), (fr.TCP, 2, 0x02), (fr.UDP, 3, 0))
    return [Step(fr.knock(source, SERVER_V4, p, port, flags), dt, (0, 0))
            for (p, port, flags), dt in zip(ports, dts, strict=True)]  # fmt: skip


def test_the_engines_agree_on_generated_streams(matcher: KernelMatcher) -> None:
    tally = Tally()
    CrossCheck(matcher, tally).run(3000, seed=7, progress=lambda: None)
    assert tally.failures == 0
    assert tally.both >= 3000 and tally.configs >= 6
    assert tally.completions > 0 and tally.knocks > tally.completions
    assert matcher.statistics().expired > 0  # streams do age attempts past their timeouts


@pytest.mark.parametrize(("dts", "completions"), [((0, 0, 0), 1), ((0, 1, 0), 1), ((0, 1, 1), 0)])
def test_time_moves_in_both_engines(
    matcher: KernelMatcher, dts: tuple[int, int, int], completions: int
) -> None:
    """Timeout 1.5 s: the third frame two seconds after the first is too late, in both."""
    events = parse_config(THREE).events
    tally = Tally()
    python, kernel = paths.PythonPath(events, LOCAL), paths.KernelPath(matcher, events, LOCAL)
    assert run_stream(python, kernel, knock_steps(KNOCKER, dts), tally) is None
    assert tally.completions == completions and tally.both == 3


def test_a_disagreement_is_found_and_cut_down(
    matcher: KernelMatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Python engine that never fires for one source: caught, and the stream that shows
    it cut down to that source's knock."""
    feed = paths.PythonPath.feed

    def blind(self: paths.PythonPath, frame: bytes, dt: float) -> paths.Completions:
        return [done for done in feed(self, frame, dt) if done[1] != KNOCKER]

    monkeypatch.setattr(paths.PythonPath, "feed", blind)
    check = CrossCheck(matcher, Tally())
    events = parse_config(THREE).events
    python, kernel = paths.PythonPath(events, LOCAL), paths.KernelPath(matcher, events, LOCAL)
    noise = [Step(fr.knock("198.51.100.7", SERVER_V4, fr.UDP, 3), 0, (0, 0))] * 4
    steps = noise + knock_steps(KNOCKER, (0, 0, 0)) + noise
    check.check_stream(THREE, python, kernel, steps)
    assert check.tally.failures == 1
    (failure,) = check.failures
    assert failure.kind == "the engines disagree"
    assert failure.steps == knock_steps(KNOCKER, (0, 0, 0))
    assert f"kernel [('e0', '{KNOCKER}')]" in failure.detail


def test_an_exception_on_the_python_side_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a kernel too: a parser that raises on some frames is reported, with the
    traceback, whatever the frame."""
    parse = paths.parse_ethernet

    def fragile(buf: object, offset: int = 0, length: int | None = None) -> object:
        if bytes(buf)[12:14] == b"\x81\x00":  # type: ignore[call-overload]
            raise IndexError("a tag too many")
        return parse(buf, offset, length)  # type: ignore[arg-type]

    monkeypatch.setattr(paths, "parse_ethernet", fragile)
    tally = Tally()
    check = CrossCheck(None, tally)
    check.run(2000, seed=3, progress=lambda: None)
    assert tally.python_only >= 1 and tally.both == 0
    assert tally.failures > 0
    assert all(f.kind == "the Python side raised" for f in check.failures)
    assert "IndexError: a tag too many" in check.failures[0].detail
    assert check.failures[0].steps[-1].frame[12:14] == b"\x81\x00"


def test_streams_hold_every_kind_of_frame() -> None:
    """Over a few streams: plain knocks, IPv6 with extension headers, VLAN tags, frames to
    other hosts, frames too short for a test run, frames the parser drops."""
    events = parse_config(THREE).events
    maker = FrameMaker(random.Random(1), [f for e in events for f in e.frames])
    frames = [step.frame for _ in range(200) for step in stream(maker, events)]
    ethertypes = {frame[12:14] for frame in frames}
    assert {b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8"} <= ethertypes
    v6_next = {frame[20] for frame in frames if frame[12:14] == b"\x86\xdd" and len(frame) > 20}
    assert {fr.HOP_BY_HOP, fr.ROUTING, fr.FRAGMENT, fr.AUTH, fr.DEST_OPTS} <= v6_next
    assert any(frame[:6] != fr.HOST_MAC for frame in frames)
    assert any(paths.too_short_for_test_run(frame) for frame in frames)
    parsed = [paths.parse_ethernet(frame) for frame in frames]
    assert 0.2 < sum(p is None for p in parsed) / len(parsed) < 0.8
    assert len(set(frames)) > 0.5 * len(frames)


# -- configs ----------------------------------------------------------------------------------


def test_config_property_accepts_what_is_right() -> None:
    assert configs.check(THREE) is None
    assert configs.check("<e0>\n sequence = udp:1\n</e0>") is None  # errors, with lines


@pytest.mark.parametrize(
    "messages", [["fuzz.conf: no line"], ["fuzz.conf:9: past the end"], ["other.conf:1: x"]]
)
def test_config_property_catches_errors_without_a_line(
    monkeypatch: pytest.MonkeyPatch, messages: list[str]
) -> None:
    def parse(text: str, path: str) -> object:
        raise ConfigError(messages)

    monkeypatch.setattr(configs, "parse_config", parse)
    assert configs.check("one line\ntwo lines") is not None


def test_config_fuzz_reports_an_escaping_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse(text: str, path: str) -> object:
        if "<" in text:
            raise KeyError("oops")
        return parse_config(text, path)

    monkeypatch.setattr(configs, "parse_config", parse)
    failures: list[str] = []
    ran = configs.fuzz_configs(300, seed=1, failures=failures, progress=lambda ran: None)
    assert ran == 300
    assert failures and all("KeyError: 'oops'" in failure for failure in failures)


def test_drawn_configs_are_read_back_as_drawn() -> None:
    drawn = [([Frame(PROTO_TCP, 22, None), Frame(PROTO_UDP, 1, None)], 0.5, True),
             ([Frame(PROTO_TCP, 65535, 0x3F)], 30.5, False)]  # fmt: skip
    events = parse_config(crosscheck.config_text(drawn), "fuzz.conf").events
    assert [(list(e.frames), e.timeout, e.stop_command is not None) for e in events] == drawn
