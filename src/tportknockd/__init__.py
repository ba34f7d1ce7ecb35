"""tportknockd: a tiny port-knocking daemon for Linux."""

__version__ = "0.2.0"
