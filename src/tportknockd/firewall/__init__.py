"""Doors the daemon opens itself: its own nftables table keeps door ports closed, and a
completed knock opens them for the knocker as set elements with a kernel timeout.

`ruleset` builds the JSON commands (pure), `libnftables` runs them in the kernel, `table`
ties both together (`DoorTable`) and watches the ruleset for flushes (`RulesetWatcher`).
"""
