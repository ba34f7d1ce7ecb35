"""A minimal ctypes binding of libnftables: one context that runs JSON command documents.

Why the JSON API and not the `nft` language: every command is a data structure built by the
ruleset module and serialised by `json.dumps`, so an event name, an address or a comment can
never be read as syntax; there is no rule text assembled from strings and nothing to quote.
And why the library, not the `nft` program: no fork per knock (one add-element through the
library takes ~0.2 ms), and one buffer of commands is one kernel transaction.

In libnftables 1.0.6 there is no input flag for JSON: `nft_run_cmd_from_buffer` parses the
buffer as JSON when the context's *output* is JSON (NFT_CTX_OUTPUT_JSON), so that flag is set
for every context. ctypes and the library are loaded on first use, not with this module.
"""

from __future__ import annotations

import json
from typing import Any

LIBRARY = "libnftables.so.1"

#: enum nft_output_flags (nftables/libnftables.h): print (and read) JSON.
NFT_CTX_OUTPUT_JSON = 1 << 4

_library: Any = None


class FirewallError(Exception):
    """The firewall cannot do what was asked; the message is one line naming the cause."""


def _load_library() -> Any:
    global _library
    if _library is None:
        import ctypes  # here, not at the top: see the module docstring

        try:
            library = ctypes.CDLL(LIBRARY)
        except OSError:
            raise FirewallError(f"{LIBRARY} not found (install nftables)") from None
        c_void_p, c_char_p, c_int, c_uint = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                             ctypes.c_uint)
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "nft_ctx_new": (c_void_p, [c_uint]),
            "nft_ctx_free": (None, [c_void_p]),
            "nft_ctx_output_set_flags": (None, [c_void_p, c_uint]),
            "nft_ctx_buffer_output": (c_int, [c_void_p]),
            "nft_ctx_buffer_error": (c_int, [c_void_p]),
            "nft_ctx_get_output_buffer": (c_char_p, [c_void_p]),
            "nft_ctx_get_error_buffer": (c_char_p, [c_void_p]),
            "nft_run_cmd_from_buffer": (c_int, [c_void_p, c_char_p]),
        }  # fmt: skip
        for name, (restype, argtypes) in signatures.items():
            function = getattr(library, name)
            function.restype, function.argtypes = restype, argtypes
        _library = library
    return _library


def error_line(text: str) -> str:
    """libnftables' error buffer as one line: 'internal:0:0-0: Error: Could not process rule:
    File exists' → 'Could not process rule: File exists'."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.split("Error:", 1)[1].strip() for line in lines if "Error:" in line]
    return "; ".join(errors or lines) or "unknown error"


class Nftables:
    """One libnftables context in JSON mode, for the life of the object (or until close)."""

    def __init__(self) -> None:
        self._library = _load_library()
        self._context = self._library.nft_ctx_new(0)
        if not self._context:
            raise FirewallError("libnftables could not create a context")
        self._library.nft_ctx_output_set_flags(self._context, NFT_CTX_OUTPUT_JSON)
        # Buffered, so output and errors come back to us instead of going to stdout/stderr.
        self._library.nft_ctx_buffer_output(self._context)
        self._library.nft_ctx_buffer_error(self._context)

    def run_json(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Run `commands` as one transaction; what the library printed, parsed (empty
        `{"nftables": []}` when it printed nothing). FirewallError with the library's reason."""
        if self._context is None:
            raise FirewallError("the libnftables context is closed")
        document = json.dumps({"nftables": commands}).encode()
        status = self._library.nft_run_cmd_from_buffer(self._context, document)
        output = (self._library.nft_ctx_get_output_buffer(self._context) or b"").decode()
        errors = (self._library.nft_ctx_get_error_buffer(self._context) or b"").decode()
        if status != 0:
            raise FirewallError(error_line(errors))
        parsed: dict[str, Any] = json.loads(output) if output.strip() else {"nftables": []}
        return parsed

    def close(self) -> None:
        if self._context is not None:
            self._library.nft_ctx_free(self._context)
            self._context = None

    def __enter__(self) -> Nftables:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
