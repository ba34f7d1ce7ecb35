"""The config language: the seed's examples, every error kind with its line, warnings, -C."""

from __future__ import annotations

import re
from itertools import permutations
from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tportknockd.config import (
    ConfigError,
    check_report,
    format_frame,
    load_config,
    parse_config,
    parse_frame,
)
from tportknockd.model import (
    ACK,
    ALL_SIX,
    FIN,
    FLAG_LETTERS,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    URG,
    Frame,
)

PATH = "knock.conf"

# The seed's three examples, verbatim, each wrapped in a block.
SEED_CONFIG = """\
<SSH>
 sequence      = udp:1234 tcp:543 tcp:543:i tcp:123:frap tcp:434:x tcp:2345:n
 timeout       = 10
 start_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
 stop_command  = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
 command_delay = 30
</SSH>

<OPENVPN>
 sequence      = tcp:12430:a tcp:2711:i tcp:123:i tcp:8375:n tcp:1155:n
 timeout       = 10
 start_command = /bin/openvpn --remote %IP% --config /opt/openvpn/client.conf
</OPENVPN>

<FLAG_KNOCK>
 sequence      = tcp:110:x tcp:110:up tcp:110:up tcp:110:n tcp:110:i
 timeout       = 10
 start_command = /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
 stop_command  = /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT
 command_delay = 30
</FLAG_KNOCK>
"""


def tcp(port: int, flags: int | None = 0) -> Frame:
    return Frame(PROTO_TCP, port, flags)


def udp(port: int) -> Frame:
    return Frame(PROTO_UDP, port, None)


def block(body: str, name: str = "E") -> str:
    return f"<{name}>\n{body}</{name}>\n"


GOOD_BODY = " sequence = tcp:7000:fs\n timeout = 5\n start_command = true\n"


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PATH)
    return caught.value.messages


def single_error(text: str) -> str:
    messages = errors_of(text)
    assert len(messages) == 1, messages
    return messages[0]


# --- the seed's examples --------------------------------------------------------------------


def test_seed_examples_parse_to_the_expected_frames() -> None:
    config = parse_config(SEED_CONFIG, PATH)
    ssh, vpn, flag_knock = config.events
    assert ssh.frames == (
        udp(1234),
        tcp(543, 0),
        tcp(543, None),
        tcp(123, FIN | RST | PSH | ACK),
        tcp(434, ALL_SIX),
        tcp(2345, 0),
    )
    assert vpn.frames == (tcp(12430, ACK), tcp(2711, None), tcp(123, None), tcp(8375), tcp(1155))
    assert flag_knock.frames == (
        tcp(110, ALL_SIX),
        tcp(110, URG | PSH),
        tcp(110, URG | PSH),
        tcp(110, 0),
        tcp(110, None),
    )


def test_seed_examples_keep_names_lines_and_commands() -> None:
    ssh, vpn, flag_knock = parse_config(SEED_CONFIG, PATH).events
    assert [ssh.name, vpn.name, flag_knock.name] == ["SSH", "OPENVPN", "FLAG_KNOCK"]
    assert [ssh.line, vpn.line, flag_knock.line] == [1, 9, 15]
    assert ssh.timeout == 10.0
    assert ssh.start_command == "/usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
    assert ssh.stop_command == "/usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT"
    assert ssh.command_delay == 30.0
    assert vpn.stop_command is None and vpn.command_delay is None


def test_seed_definition_syntax_with_trailing_comments_is_accepted() -> None:
    text = """\
 <EVENT_NAME>                   # define an knock event with name "EVENT_NAME"
  sequence = tcp:1000:s udp:53  # port knocking sequence
  timeout  = 10                 # timeout for the knock sequence
  start_command = echo %IP%     # command to execute after successfull knock
  stop_command  = echo bye      # (optional) execute after command_delay
  command_delay = 2.5           # (optional) delay for execute end_command
 </EVENT_NAME>                  # end of knock event definition
"""
    (event,) = parse_config(text, PATH).events
    assert event.frames == (tcp(1000, SYN), udp(53))
    assert (event.start_command, event.stop_command) == ("echo %IP%", "echo bye")
    assert event.command_delay == 2.5


# --- lexical details ------------------------------------------------------------------------


def test_comment_glued_to_a_word_stays_in_the_command() -> None:
    body = " sequence = tcp:7000\n timeout = 5\n start_command = echo a#b  # real comment\n"
    (event,) = parse_config(block(body), PATH).events
    assert event.start_command == "echo a#b"


def test_whole_line_comments_blank_lines_and_crlf_are_ignored() -> None:
    text = "# header\n\n<E>\r\n  # inside\r\n\t\r\n" + GOOD_BODY.replace("\n", "\r\n") + "</E>\r\n"
    (event,) = parse_config(text, PATH).events
    assert event.frames == (tcp(7000, FIN | SYN),)
    assert event.start_command == "true"


def test_frames_may_be_separated_by_commas_and_white_space() -> None:
    body = " sequence = tcp:1,tcp:2, udp:3 ,\ttcp:4:S  TCP:5:i\n timeout = 1\n start_command = x\n"
    (event,) = parse_config(block(body), PATH).events
    assert event.frames == (tcp(1), tcp(2), udp(3), tcp(4, SYN), tcp(5, None))


def test_value_is_the_rest_of_the_line_including_equals_signs() -> None:
    body = " sequence = tcp:7000\n timeout = 5\n start_command = env A=1  B=2 run\n"
    (event,) = parse_config(block(body), PATH).events
    assert event.start_command == "env A=1  B=2 run"


def test_event_names_allow_letters_digits_underscore_dash_and_dot() -> None:
    (event,) = parse_config(block(GOOD_BODY, name="ssh-v2.open_1"), PATH).events
    assert event.name == "ssh-v2.open_1"


def test_numbers_may_be_fractional() -> None:
    body = " sequence = tcp:7000\n timeout = 0.25\n start_command = x\n"
    (event,) = parse_config(block(body), PATH).events
    assert event.timeout == 0.25


# --- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:22", tcp(22, 0)),
        ("tcp:22:n", tcp(22, 0)),
        ("tcp:22:x", tcp(22, ALL_SIX)),
        ("tcp:22:i", tcp(22, None)),
        ("udp:65535", udp(65535)),
        ("UDP:1", udp(1)),
        ("Tcp:80:SA", tcp(80, SYN | ACK)),
        (" tcp:80:u ", tcp(80, URG)),
    ],
)
def test_parse_frame_accepts(text: str, expected: Frame) -> None:
    assert parse_frame(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("tcp", "expected protocol:port"),
        ("tcp:1:s:a", "expected protocol:port"),
        ("icmp:1", "unknown protocol 'icmp'"),
        ("tcp:0", "out of range"),
        ("tcp:65536", "out of range"),
        ("tcp:" + "9" * 5000, "out of range"),
        ("tcp:-1", "not a decimal number"),
        ("tcp:+1", "not a decimal number"),
        ("tcp:", "not a decimal number"),
        ("tcp:٣", "not a decimal number"),
        ("tcp:1:", "empty flags"),
        ("tcp:1:q", "unknown flag letter 'q'"),
        ("tcp:1:ss", "'s' is repeated"),
        ("tcp:1:xs", "'x' cannot be combined"),
        ("tcp:1:sn", "'n' cannot be combined"),
        ("tcp:1:ii", "'i' cannot be combined"),
        ("udp:53:s", "only TCP frames take flags"),
        ("udp:53:i", "only TCP frames take flags"),
    ],
)
def test_parse_frame_rejects_with_a_readable_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as caught:
        parse_frame(text)
    assert str(caught.value).startswith("bad frame ")


def test_flag_letters_in_any_order_give_the_same_flags() -> None:
    for letters in permutations("fsrpau"):
        assert parse_frame("tcp:9:" + "".join(letters)).flags == ALL_SIX


@given(st.sets(st.sampled_from(sorted(FLAG_LETTERS)), min_size=1), st.randoms())
def test_any_subset_of_flag_letters_in_any_order(letters: set[str], rnd: Random) -> None:
    spelled = sorted(letters)
    rnd.shuffle(spelled)
    expected = 0
    for letter in letters:
        expected |= FLAG_LETTERS[letter]
    assert parse_frame("tcp:9:" + "".join(spelled)).flags == expected


frames = st.one_of(
    st.builds(udp, st.integers(1, 65535)),
    st.builds(tcp, st.integers(1, 65535), st.none() | st.integers(0, ALL_SIX)),
)


@given(frames)
def test_parse_frame_round_trips_format_frame(frame: Frame) -> None:
    assert parse_frame(format_frame(frame)) == frame


def test_format_frame_spells_like_the_seed() -> None:
    assert format_frame(tcp(123, FIN | RST | PSH | ACK)) == "tcp:123:frpa"
    assert format_frame(tcp(434, ALL_SIX)) == "tcp:434:x"
    assert format_frame(tcp(2345, 0)) == "tcp:2345:n"
    assert format_frame(tcp(543, None)) == "tcp:543:i"
    assert format_frame(udp(1234)) == "udp:1234"


# --- errors, one kind at a time, with exact lines -------------------------------------------


def test_unknown_key() -> None:
    text = "<E>\n" + GOOD_BODY + " colour = red\n</E>\n"
    assert single_error(text).startswith(f"{PATH}:5: unknown key 'colour'")


def test_keys_are_lower_case_only() -> None:
    text = "<E>\n sequence = tcp:1\n Timeout = 5\n start_command = x\n</E>\n"
    messages = errors_of(text)
    assert messages == [
        f"{PATH}:1: event 'E' lacks required key 'timeout'",
        f"{PATH}:3: unknown key 'Timeout' (keys are lower-case: 'timeout')",
    ]


def test_missing_keys_are_reported_at_the_opening_line() -> None:
    text = "\n\n<E>\n timeout = 5\n</E>\n"
    assert errors_of(text) == [
        f"{PATH}:3: event 'E' lacks required key 'sequence' "
        "(or 'otp_secret' or 'one_time_sequences' for one-time sequences)",
        f"{PATH}:3: event 'E' does nothing: give it a door (ports the knock opens), a "
        "start_command, or both",
    ]


def test_duplicate_key_names_the_first_line() -> None:
    text = "<E>\n" + GOOD_BODY + " timeout = 7\n</E>\n"
    assert single_error(text) == f"{PATH}:5: duplicate key 'timeout' (first set at line 3)"


def test_duplicate_event_name_names_the_first_line() -> None:
    text = block(GOOD_BODY, "A") + block(GOOD_BODY, "B") + block(GOOD_BODY, "A")
    assert single_error(text) == f"{PATH}:11: duplicate event name 'A' (first defined at line 1)"


def test_unterminated_block_is_reported_at_its_opening_line() -> None:
    text = block(GOOD_BODY, "A") + "<B>\n" + GOOD_BODY
    assert single_error(text) == f"{PATH}:6: block <B> is never closed (missing </B>)"


def test_mismatched_closing_tag() -> None:
    text = "<A>\n" + GOOD_BODY + "</B>\n"
    assert single_error(text) == f"{PATH}:5: closing tag </B> does not match <A> opened at line 1"


def test_closing_tag_without_open_block() -> None:
    text = block(GOOD_BODY) + "</E>\n"
    assert single_error(text) == f"{PATH}:6: closing tag </E> without an open block"


def test_key_outside_a_block() -> None:
    text = block(GOOD_BODY) + "timeout = 3\n"
    assert single_error(text).startswith(f"{PATH}:6: key 'timeout' outside of a block")


def test_nested_block_ends_the_outer_one_and_checking_goes_on() -> None:
    text = "<A>\n" + GOOD_BODY + "<B>\n" + GOOD_BODY + "</B>\n"
    assert single_error(text).startswith(
        f"{PATH}:5: nested block <B> inside <A> (opened at line 1)"
    )


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        ("icmp:7", "sequence: bad frame 'icmp:7': unknown protocol 'icmp' (expected tcp or udp)"),
        ("tcp:70000", "sequence: bad frame 'tcp:70000': port 70000 is out of range 1..65535"),
        ("tcp:7:sz", "sequence: bad frame 'tcp:7:sz': unknown flag letter 'z'"),
        ("udp:7:a", "sequence: bad frame 'udp:7:a': only TCP frames take flags"),
        ("tcp:7:ixs", "sequence: bad frame 'tcp:7:ixs': flag 'i' cannot be combined"),
        (" , ", "empty sequence"),
        ("", "empty sequence"),
    ],
)
def test_bad_sequences(sequence: str, message: str) -> None:
    text = f"<E>\n timeout = 1\n sequence = {sequence}\n start_command = x\n</E>\n"
    assert single_error(text).startswith(f"{PATH}:3: {message}")


def test_every_bad_frame_of_a_sequence_is_reported() -> None:
    text = "<E>\n sequence = tcp:0 udp:1 tcp:2:k\n timeout = 1\n start_command = x\n</E>\n"
    assert errors_of(text) == [
        f"{PATH}:2: sequence: bad frame 'tcp:0': port 0 is out of range 1..65535",
        f"{PATH}:2: sequence: bad frame 'tcp:2:k': unknown flag letter 'k' "
        "(use f s r p a u, or x, n, i)",
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ten", "'ten' is not a number of seconds"),
        ("10 s", "'10 s' is not a number of seconds"),
        ("1_0", "'1_0' is not a number of seconds"),
        ("0", "'0' must be greater than 0 seconds"),
        ("-3", "'-3' must be greater than 0 seconds"),
        ("0.0", "'0.0' must be greater than 0 seconds"),
        ("inf", "'inf' is not a finite number of seconds"),
        ("nan", "'nan' is not a finite number of seconds"),
        ("1e999", "'1e999' is not a finite number of seconds"),
        ("", "no value"),
    ],
)
@pytest.mark.parametrize("key", ["timeout", "command_delay"])
def test_bad_numbers(key: str, value: str, message: str) -> None:
    body = " sequence = tcp:7\n timeout = 1\n start_command = x\n stop_command = y\n"
    body += " command_delay = 1\n"
    body = body.replace(f" {key} = 1\n", f" {key} = {value}\n")
    line = 3 if key == "timeout" else 6
    assert single_error(block(body)).startswith(f"{PATH}:{line}: {key}: {message}")


def test_stop_command_needs_command_delay_and_the_other_way_round() -> None:
    without_delay = GOOD_BODY + " stop_command = y\n"
    assert single_error(block(without_delay)).startswith(
        f"{PATH}:5: stop_command needs command_delay"
    )
    without_stop = GOOD_BODY + " command_delay = 3\n"
    assert single_error(block(without_stop)).startswith(
        f"{PATH}:5: command_delay needs stop_command"
    )


@pytest.mark.parametrize("key", ["start_command", "stop_command"])
def test_empty_command(key: str) -> None:
    body = GOOD_BODY.replace("start_command = true", "start_command = x")
    body += " stop_command = y\n command_delay = 1\n"
    body = body.replace(f" {key} = {'x' if key == 'start_command' else 'y'}\n", f" {key} =\n")
    line = 4 if key == "start_command" else 5
    assert single_error(block(body)) == f"{PATH}:{line}: {key} is empty: expected a command to run"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("huh", "cannot parse 'huh'"),
        ("sequence tcp:1", "missing '=' after 'sequence'"),
        ("= 5", "cannot parse '= 5'"),
        ("two words = 5", "cannot parse 'two words = 5'"),
        ("<not a tag>", "malformed block tag '<not a tag>'"),
        ("<E", "malformed block tag '<E'"),
        ("start_command = a\x00b", "line contains control character U+0000"),
    ],
)
def test_garbage_lines(line: str, message: str) -> None:
    text = "<E>\n" + GOOD_BODY + line + "\n</E>\n"
    assert single_error(text).startswith(f"{PATH}:5: {message}")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_a_file_without_events(text: str) -> None:
    assert single_error(text).startswith(f"{PATH}:1: no events defined")


def test_all_errors_are_reported_at_once_in_line_order() -> None:
    text = """\
<A>
 sequence = tcp:0
 timeout = soon
 start_command = x
 colour = blue
</A>
stray = 1
<A>
 sequence = udp:9:s
 timeout = 1
 timeout = 2
 start_command = x
</B>
<C>
"""
    assert errors_of(text) == [
        f"{PATH}:2: sequence: bad frame 'tcp:0': port 0 is out of range 1..65535",
        f"{PATH}:3: timeout: 'soon' is not a number of seconds",
        f"{PATH}:5: unknown key 'colour' (known keys: sequence, timeout, start_command, "
        "stop_command, command_delay, door, door_timeout, door_prefix, otp_secret, otp_length, "
        "otp_ports, otp_frames, otp_window, one_time_sequences)",
        f"{PATH}:7: key 'stray' outside of a block (put it inside <NAME>)",
        f"{PATH}:8: duplicate event name 'A' (first defined at line 1)",
        f"{PATH}:9: sequence: bad frame 'udp:9:s': only TCP frames take flags",
        f"{PATH}:11: duplicate key 'timeout' (first set at line 10)",
        f"{PATH}:13: closing tag </B> does not match <A> opened at line 8",
        f"{PATH}:14: block <C> is never closed (missing </C>)",
        f"{PATH}:14: event 'C' lacks required key 'sequence' "
        "(or 'otp_secret' or 'one_time_sequences' for one-time sequences)",
        f"{PATH}:14: event 'C' lacks required key 'timeout'",
        f"{PATH}:14: event 'C' does nothing: give it a door (ports the knock opens), a "
        "start_command, or both",
    ]


def test_config_error_string_joins_the_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("huh\n<E>\n", PATH)
    error = caught.value
    assert len(error.messages) > 1
    assert str(error) == "\n".join(error.messages)


def test_default_path_appears_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("huh")
    assert caught.value.messages[0].startswith("<config>:1: ")


# --- property: any text gives a Config or a well-formed ConfigError -------------------------

config_fragments = st.sampled_from(
    [
        "<E>",
        "</E>",
        "<F>",
        "</F>",
        "<>",
        "sequence = tcp:1:s udp:2",
        "sequence = tcp:99999:xx",
        "sequence =",
        "timeout = 5",
        "timeout = -1e999",
        "start_command = echo %IP% #x",
        "stop_command = y",
        "command_delay = 2",
        "# comment",
        "",
        "=",
        "a = b",
    ]
)
config_lines = st.one_of(config_fragments, st.text(max_size=30))
config_texts = st.one_of(
    st.text(),
    st.lists(config_lines, max_size=20).map("\n".join),
)


@given(config_texts)
def test_any_text_gives_a_config_or_config_error(text: str) -> None:
    try:
        config = parse_config(text, "any.conf")
    except ConfigError as error:
        assert error.messages
        for message in error.messages:
            assert re.match(r"^any\.conf:\d+: ", message), message
    else:
        assert config.events
        assert config.path == "any.conf"


# --- warnings -------------------------------------------------------------------------------


def warnings_for(sequence: str) -> tuple[str, ...]:
    body = f" sequence = {sequence}\n timeout = 5\n start_command = x\n"
    return parse_config(block(body), PATH).warnings


@pytest.mark.parametrize(
    "first",
    [
        "tcp:7000:s",
        "tcp:7000:a",
        "tcp:7000:pa",
        "tcp:7000:as",
        "tcp:7000:fa",
        "tcp:7000:r",
        "tcp:7000:ra",
        "tcp:7000:i",
        "tcp:22:i",
        "udp:53",
        "udp:123",
        "udp:67",
        "udp:68",
        "udp:137",
        "udp:138",
        "udp:5353",
        "udp:161",
    ],
)
def test_first_frame_seen_in_ordinary_traffic_warns(first: str) -> None:
    (warning,) = warnings_for(f"{first} tcp:9000:x")
    frame = parse_frame(first)
    assert warning.startswith(f"{PATH}:2: warning: event 'E' starts with {frame.describe()}, ")
    assert "ordinary traffic" in warning


@pytest.mark.parametrize(
    "first", ["tcp:7000:n", "tcp:7000", "tcp:7000:x", "tcp:7000:fu", "udp:1234", "tcp:22:x"]
)
def test_unusual_first_frame_does_not_warn(first: str) -> None:
    assert warnings_for(f"{first} tcp:9000:s udp:53") == ()


def test_well_known_port_with_ignored_flags_says_so() -> None:
    (warning,) = warnings_for("tcp:443:i")
    assert "well-known service port 443" in warning


def test_seed_examples_warn_only_about_the_ack_first_frame() -> None:
    assert parse_config(SEED_CONFIG, PATH).warnings == (
        f"{PATH}:10: warning: event 'OPENVPN' starts with tcp/12430 ACK, which ordinary "
        "traffic produces (most segments of every connection carry it); prefer a first frame "
        "that does not occur in usual traffic",
    )


def test_identical_sequences_warn() -> None:
    text = block(GOOD_BODY, "A") + block(GOOD_BODY.replace("5", "9"), "B")
    (warning,) = parse_config(text, PATH).warnings
    assert warning == (
        f"{PATH}:7: warning: event 'B' has the same sequence as event 'A' (line 1); "
        "one knock triggers both"
    )


# --- load_config ----------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "knock.conf"
    path.write_text(SEED_CONFIG, encoding="utf-8")
    config = load_config(str(path))
    assert config.path == str(path)
    assert len(config.events) == 3


def test_load_config_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "knock.conf"
    path.write_bytes(b"\xef\xbb\xbf" + block(GOOD_BODY).encode())
    assert len(load_config(str(path)).events) == 1


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.conf"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.messages == [f"{path}: cannot read: No such file or directory"]


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert caught.value.messages == [f"{tmp_path}: cannot read: Is a directory"]


def test_load_config_too_large(tmp_path: Path) -> None:
    path = tmp_path / "huge.conf"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.messages[0].startswith(f"{path}: cannot read: larger than")


def test_load_config_reports_every_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    text = "<E>\n" + GOOD_BODY + " stop_command = echo café\n command_delay = 1\n</E>\n# né\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.messages == [
        f"{path}:5: not valid UTF-8 (byte 0xe9 at column 25)",
        f"{path}:8: not valid UTF-8 (byte 0xe9 at column 4)",
    ]


def test_load_config_merges_utf8_and_syntax_errors_in_line_order(tmp_path: Path) -> None:
    path = tmp_path / "mixed.conf"
    path.write_bytes(b"<E>\n sequence = tcp:\xff\n timeout = x\n start_command = y\n</E>\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.messages == [
        f"{path}:2: not valid UTF-8 (byte 0xff at column 17)",
        f"{path}:3: timeout: 'x' is not a number of seconds",
    ]


# --- check_report ---------------------------------------------------------------------------


def test_check_report_spells_out_every_event() -> None:
    report = check_report(parse_config(SEED_CONFIG, PATH))
    first = report.split("\n\n")[0]
    assert first == (
        "event SSH (line 1)\n"
        "  sequence:\n"
        "    1. udp/1234\n"
        "    2. tcp/543 none\n"
        "    3. tcp/543 any flags\n"
        "    4. tcp/123 FIN+RST+PSH+ACK\n"
        "    5. tcp/434 FIN+SYN+RST+PSH+ACK+URG\n"
        "    6. tcp/2345 none\n"
        "  timeout:       10 s\n"
        "  door:          none\n"
        "  start_command: /usr/sbin/iptables -A INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        "  stop_command:  /usr/sbin/iptables -D INPUT -s %IP% -p tcp --dport 22 -j ACCEPT\n"
        "  command_delay: 30 s"
    )
    assert "event OPENVPN (line 9)" in report
    assert "  stop_command:  none\n  command_delay: none" in report
    assert report.endswith("\n3 events OK")
    assert "warning" not in report


def test_check_report_singular_and_fractions() -> None:
    body = " sequence = udp:9\n timeout = 2.5\n start_command = x\n"
    report = check_report(parse_config(block(body), PATH))
    assert "  timeout:       2.5 s" in report
    assert report.endswith("\n1 event OK")
