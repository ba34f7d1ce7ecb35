"""`make bench`: tportknockd (with each engine, python and kernel) and knockd side by side, on
the same knocks and the same floods.

The parts, each in its own module:

- `settings`  — addresses, doors, targets and the size of a run (`--quick` or full);
- `testbed`   — the two network namespaces and the processes the bench starts;
- `daemons`   — the daemons compared (their configs, command lines, readiness, statistics);
- `traffic`   — knocks (the project's client, hping3) and floods (trafgen);
- `measure`   — CPU, memory, the capture of sent knocks and the detections;
- `scenarios` — what each scenario sends, and which rows (with targets) it has in the report;
- `runner`    — each scenario against each daemon, with a fresh daemon and measurements;
- `kernel_cost` — the kernel engine's cost per packet (BPF_PROG_TEST_RUN; a script too);
- `summary`   — per-scenario figures (detections, latency percentiles, CPU per packet);
- `report`    — the Markdown table, the JSON file; `plot` — the figure;
- `cli`       — the command line; `run` — the script `make bench` runs.
"""
