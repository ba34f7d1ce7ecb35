"""The `tportknockd` command line: the classic options of the original, plus a few long ones."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

# First, before any part that only Linux has: on another system this exits with one line.
from tportknockd import __version__, needs_linux  # noqa: F401
from tportknockd.capture import netif
from tportknockd.capture.selection import Selection, any_would_listen_on
from tportknockd.config import ConfigError, check_report, load_config
from tportknockd.daemon.commands import DEFAULT_MAX_RUNNING, DEFAULT_TIME_LIMIT
from tportknockd.daemon.loop import ENGINES, Daemon, Options, StartupError
from tportknockd.daemon.state import DEFAULT_STATE_FILE
from tportknockd.frame_syntax import format_door_port
from tportknockd.matching.engine import DEFAULT_MAX_ATTEMPTS
from tportknockd.model import DoorPort

log = logging.getLogger("tportknockd")

DEFAULT_PID_FILE = "/run/tportknockd.pid"

USAGE = """\
usage: tportknockd -c CONFIG -i DEVICE[,DEVICE]... [-r SEC] [-d] [-D]
       tportknockd -C CONFIG [--show-sequences]
       tportknockd -l
       tportknockd --doors | --remove-table
       tportknockd -h"""

HELP = f"""\
tportknockd {__version__} - tiny port-knocking daemon

{USAGE}

  -c CONFIG   configuration file with the knock sequences
  -C CONFIG   check the configuration file for errors and display every sequence
  -i DEVICE   interface(s) to listen on: -i eth0,wg0 or -i eth0 -i wg0; -i any is every
              interface but lo, present and future (each once it is up)
  -r SEC      refresh the interfaces' addresses every SEC seconds
  -l          list the network devices with their state and addresses, and what -i any
              listens on
  -d          debug: log every counted packet and every state change
  -D          daemon mode: detach, write a pid file, log to syslog
  -h          this help

long options:
  --pid-file FILE         pid file in daemon mode (default {DEFAULT_PID_FILE})
  --log-file FILE         log to FILE (as well as stderr, or instead of syslog with -D)
  --max-attempts N        knock attempts with one frame in kept at most (default
                          {DEFAULT_MAX_ATTEMPTS}); those further on get an eighth of it besides
  --max-commands N        commands running at once at most (default {DEFAULT_MAX_RUNNING})
  --command-timeout SEC   kill a command that runs longer (default {DEFAULT_TIME_LIMIT:g})
  --ring-size MIB         capture ring size in MiB, per interface (default 2, or 256 KiB
                          where the kernel engine matches; more absorbs longer bursts)
  --state-file FILE       where open doors are recorded to survive a crash
                          (default {DEFAULT_STATE_FILE}; 'none' to keep no record)
  --engine ENGINE         auto, kernel or python: where knocks are matched (default auto:
                          in the kernel, as an eBPF program, where the kernel allows it)
  --show-sequences        with -C: also show the current sequences of one-time events
  --doors                 list the doors open now (read from the kernel: works whether or
                          not the daemon runs)
  --remove-table          remove the daemon's nftables table: every door port opens to
                          everyone again, and every open door closes
  --version               print the version

Signals: SIGHUP reloads the configuration (a broken one is rejected, the old one kept),
SIGUSR1 logs statistics, SIGTERM/SIGINT run every pending stop_command, then exit."""


class UsageError(Exception):
    pass


class _Formatter(argparse.HelpFormatter):
    """A fixed width. Without one, argparse asks shutil for the terminal's on every
    add_argument, and shutil brings the compression modules along: 0.4 MB resident in the
    daemon for nothing, since -h prints HELP, not argparse's help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _seconds_up_to_a_day(text: str) -> float:
    # Far beyond any sensible value, and well inside what poll/select timeouts accept.
    value = _positive(text)
    if value > 86400:
        raise argparse.ArgumentTypeError(f"at most 86400 seconds (a day): {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tportknockd", add_help=False, usage=USAGE, formatter_class=_Formatter)
    p.add_argument("-c", dest="config", metavar="CONFIG")
    p.add_argument("-C", dest="check", metavar="CONFIG")
    p.add_argument("-i", dest="interface", metavar="DEVICE", action="append")
    p.add_argument("-r", dest="refresh", type=_seconds_up_to_a_day, metavar="SEC")
    p.add_argument("-l", dest="list", action="store_true")
    p.add_argument("-d", dest="debug", action="store_true")
    p.add_argument("-D", dest="daemon", action="store_true")
    p.add_argument("-h", "--help", dest="help", action="store_true")
    p.add_argument("--pid-file", default=DEFAULT_PID_FILE)
    p.add_argument("--log-file")
    p.add_argument("--max-attempts", type=_count, default=DEFAULT_MAX_ATTEMPTS)
    p.add_argument("--max-commands", type=_count, default=DEFAULT_MAX_RUNNING)
    p.add_argument("--command-timeout", type=_seconds_up_to_a_day, default=DEFAULT_TIME_LIMIT)
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE)
    p.add_argument("--ring-size", type=_count)
    p.add_argument("--show-sequences", action="store_true")
    p.add_argument("--engine", choices=ENGINES, default="auto")
    p.add_argument("--doors", action="store_true")
    p.add_argument("--remove-table", action="store_true")
    p.add_argument("--version", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except UsageError as exc:
        print(f"tportknockd: {exc} (see tportknockd -h)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.help:
        print(HELP)
        return 0
    if args.version:
        print(f"tportknockd {__version__}")
        return 0
    if args.list:
        return list_devices()
    if args.doors:
        return list_doors()
    if args.remove_table:
        return remove_table()
    if args.check:
        return check(args.check, show_sequences=args.show_sequences)
    if args.show_sequences:
        raise UsageError("--show-sequences goes with -C CONFIG")
    if not args.config:
        raise UsageError("-c CONFIG is required (or -C, -l, -h)")
    if not args.interface:
        raise UsageError("-i DEVICE is required")
    try:
        args.interface = Selection.parse(args.interface)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return serve(args)


def list_devices() -> int:
    try:
        links = netif.list_interfaces()
    except OSError as exc:
        print(f"tportknockd: cannot list devices: {exc}", file=sys.stderr)
        return 1
    for link in links:
        state = "UP" if link.up else "DOWN"
        addresses = " ".join(link.addresses) or "-"
        print(f"{link.name:<16} {state:<5} {link.operstate:<8} {addresses}")
    now, later = any_would_listen_on(links)
    print(f"-i any listens on: {' '.join(now) or 'none yet'}", end="")
    print(f"; once up: {' '.join(later)}" if later else "", end="")
    print("; and on interfaces added later (never lo)")
    return 0


def list_doors() -> int:
    """Each open door of the daemon's table: event, source, ports, time left."""
    from tportknockd.firewall.libnftables import FirewallError
    from tportknockd.firewall.table import DoorTable

    try:
        with DoorTable() as table:
            if not table.present():
                print("no door table: no tportknockd with doors has run since boot")
                return 0
            doors = table.open_doors()
    except FirewallError as exc:
        print(f"tportknockd: {exc}", file=sys.stderr)
        return 1
    for door in sorted(doors, key=lambda d: (d.event, str(d.source), d.protocol, d.low)):
        ports = format_door_port(DoorPort(door.protocol, door.low, door.high))
        left = "no timeout" if door.seconds_left is None else f"{door.seconds_left} s left"
        print(f"{door.event:<16} {str(door.source):<24} {ports:<16} {left}")
    print(f"{len(doors)} open door{'' if len(doors) == 1 else 's'}")
    return 0


def remove_table() -> int:
    """Remove the table: the door ports are guarded no more."""
    from tportknockd.firewall.libnftables import FirewallError
    from tportknockd.firewall.table import DoorTable

    try:
        with DoorTable() as table:
            present = table.present()
            table.remove()
    except FirewallError as exc:
        print(f"tportknockd: {exc}", file=sys.stderr)
        return 1
    print("removed the nftables table tportknockd" if present else "no table to remove")
    return 0


def check(path: str, show_sequences: bool = False) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    for warning in [*config.warnings, *_file_warnings(path)]:
        print(warning, file=sys.stderr)
    print(check_report(config, time.time() if show_sequences else None))
    return 0


def serve(args: argparse.Namespace) -> int:
    # -D changes to / before these are used (pid file, later log lines, SIGHUP's re-read).
    for name in ("config", "pid_file", "log_file", "state_file"):
        path = getattr(args, name)
        if path and path != "none":
            setattr(args, name, os.path.abspath(path))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    _setup_logging(args.debug, args.log_file, to_syslog=False)
    log.info(
        "tportknockd %s starting: %s on %s", __version__, args.config, args.interface.describe()
    )
    for warning in [*config.warnings, *_file_warnings(args.config)]:
        log.warning("%s", warning)
    options = Options(
        config_path=args.config,
        interfaces=args.interface,
        refresh=args.refresh,
        debug=args.debug,
        max_attempts=args.max_attempts,
        max_commands=args.max_commands,
        command_time_limit=args.command_timeout,
        state_file=None if args.state_file == "none" else args.state_file,
        ring_mib=args.ring_size,
        engine=args.engine,
    )
    if args.daemon:
        running = _running_pid(args.pid_file)
        if running:
            print(
                f"tportknockd: already running as pid {running} ({args.pid_file})", file=sys.stderr
            )
            return 1
        if not args.log_file and not os.path.exists("/dev/log"):
            print(
                "tportknockd: warning: no syslog socket /dev/log and no --log-file: "
                "the daemon's log goes nowhere",
                file=sys.stderr,
            )
    daemon = Daemon(config, options)
    try:
        # Everything that can fail for the user fails here, while stderr is still theirs.
        daemon.open()
    except StartupError as exc:
        print(f"tportknockd: {exc}", file=sys.stderr)
        return 1
    if args.daemon:
        _detach(args.pid_file)
        _setup_logging(args.debug, args.log_file, to_syslog=True)
        log.info("tportknockd %s running as pid %d", __version__, os.getpid())
    try:
        return daemon.run()
    finally:
        if args.daemon:
            _remove_pid_file(args.pid_file)


def _file_warnings(path: str) -> list[str]:
    """The config's commands run as root: say so when others could change them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & 0o022:
        return [f"{path}: warning: writable by group or others, and its commands run as root"]
    return []


def _setup_logging(debug: bool, log_file: str | None, to_syslog: bool) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handlers: list[logging.Handler] = []
    stamped = logging.Formatter("%(asctime)s tportknockd[%(process)d]: %(levelname)s %(message)s")
    if log_file:
        to_file = logging.FileHandler(log_file)
        to_file.setFormatter(stamped)
        handlers.append(to_file)
    if to_syslog:
        # Only daemons log to syslog: spare the foreground 3 MB of imports.
        from logging.handlers import SysLogHandler

        if os.path.exists("/dev/log"):
            syslog = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
            syslog.setFormatter(logging.Formatter("tportknockd[%(process)d]: %(message)s"))
            handlers.append(syslog)
    else:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(stamped)
        handlers.append(stderr)
    for new in handlers:
        root.addHandler(new)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _detach(pid_file: str) -> None:
    """Classic double fork; the parent returns to the shell once the pid file exists."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        ok = os.read(read_end, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    try:
        with open(pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        print(f"tportknockd: cannot write pid file {pid_file}: {exc}", file=sys.stderr)
        os.write(write_end, b"0")
        os._exit(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.write(write_end, b"1")
    os.close(write_end)


def _running_pid(pid_file: str) -> int | None:
    """The pid in `pid_file` if a tportknockd still runs under it (a stale file is ignored)."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            alive = b"tportknockd" in f.read()
    except (OSError, ValueError):
        return None
    return pid if alive else None


def _remove_pid_file(pid_file: str) -> None:
    try:
        with open(pid_file) as f:
            if f.read().strip() == str(os.getpid()):
                os.remove(pid_file)
    except OSError:
        pass
