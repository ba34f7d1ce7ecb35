"""The figure (latest.png): latency per knock, knocks that opened, daemon CPU; one bar or box
per daemon in each scenario."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import get
from bench.scenarios import Scenario
from bench.settings import TARGETS
from bench.summary import Outcome, Summaries

COLORS = {"knockd": "#d62728", "tportknockd": "#1f77b4", "tportknockd-python": "#1f77b4",
          "tportknockd-kernel": "#2ca02c"}
#: For daemons without a colour of their own (another engine, other options).
SPARE_COLORS = ("#ff7f0e", "#9467bd", "#8c564b", "#17becf")
SPAN = 0.72  # of each scenario's slot on the x axis, shared by the daemons' bars


def colors(daemons: Sequence[str]) -> dict[str, str]:
    spare = iter(SPARE_COLORS)
    return {name: COLORS.get(name) or next(spare) for name in daemons}


def offsets(daemons: Sequence[str]) -> tuple[float, list[float]]:
    """The width of one daemon's bar and each daemon's offset from its scenario's tick."""
    width = SPAN / len(daemons)
    return width, [(i - (len(daemons) - 1) / 2) * width for i in range(len(daemons))]


def plot(path: Path, scenarios: Sequence[Scenario], daemons: Sequence[str],
         outcomes: list[Outcome], sums: Summaries) -> None:
    # matplotlib is installed by the bench itself; imported by name so that its presence or
    # absence (and its own typing) does not change what mypy sees.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    shown = [s for s in scenarios if s.key in sums]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(13, 12))
    _latency(top, shown, daemons, outcomes)
    _opened(middle, shown, daemons, sums)
    _cpu(bottom, shown, daemons, sums)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _latency(ax: Any, shown: Sequence[Scenario], daemons: Sequence[str],
             outcomes: list[Outcome]) -> None:
    palette = colors(daemons)
    width, shifts = offsets(daemons)
    for offset, name in zip(shifts, daemons, strict=True):
        data, positions = [], []
        for i, scenario in enumerate(shown):
            mine = [o for o in outcomes if o.scenario == scenario.key and o.daemon == name]
            values = [k["latency_ms"] for o in mine for k in o.knocks
                      if k["latency_ms"] is not None and k["kind"] != "ece"]
            if values:
                data.append(values)
                positions.append(i + offset)
            elif mine:
                ax.annotate("none\nopened", (i + offset, 0.02), xycoords=("data", "axes fraction"),
                            ha="center", fontsize=8, color=palette[name])
        if data:
            parts = ax.boxplot(data, positions=positions, widths=width * 5 / 6,
                               patch_artist=True, showfliers=False)
            for box in parts["boxes"]:
                box.set_facecolor(palette[name])
                box.set_alpha(0.35)
            for pos, values in zip(positions, data, strict=True):
                ax.scatter([pos] * len(values), values, s=10, color=palette[name], zorder=3)
        ax.plot([], [], color=palette[name], label=name, linewidth=6, alpha=0.5)
    ax.set_yscale("log")
    ax.set_ylabel("knock → start_command (ms, log)")
    ax.set_title("Latency per scenario (each dot one knock)")
    ax.axhline(TARGETS["idle_median_ms"], color="grey", linestyle=":", linewidth=1,
               label=f"{TARGETS['idle_median_ms']:g} ms (idle median target)")
    ax.set_xticks(range(len(shown)), [s.label for s in shown])
    ax.legend(loc="upper left")
    ax.grid(axis="y", which="both", alpha=0.3)


def _opened(ax: Any, shown: Sequence[Scenario], daemons: Sequence[str],
            sums: Summaries) -> None:
    palette = colors(daemons)
    width, shifts = offsets(daemons)
    # A flag-door scenario twice: its exact knocks must open, its URG+PSH+ECE knocks must not.
    groups: list[tuple[Scenario, str]] = []
    for scenario in shown:
        groups.append((scenario, "detected"))
        if scenario.rows.flag_door:
            groups.append((scenario, "ece_opened"))
    labels = [s.label if what == "detected" else f"{s.key} +ECE (stay shut)"
              for s, what in groups]
    for offset, name in zip(shifts, daemons, strict=True):
        positions, fractions, texts = [], [], []
        for i, (scenario, what) in enumerate(groups):
            summary = sums[scenario.key].get(name)
            if summary is None:
                continue  # not run, or not for this daemon: no bar rather than a 0
            counts = get(summary, what) or (0, 0)
            positions.append(i + offset)
            fractions.append(counts[0] / counts[1] if counts[1] else 0)
            texts.append(f"{counts[0]}/{counts[1]}")
        if not positions:
            continue  # nothing of this daemon here: no (miscoloured) legend entry either
        bars = ax.bar(positions, fractions, width, color=palette[name], label=name)
        for bar, text in zip(bars, texts, strict=True):
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("opened / sent")
    ax.set_title("Knocks that opened the door")
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    ax.legend(loc="lower left")


def _cpu(ax: Any, shown: Sequence[Scenario], daemons: Sequence[str], sums: Summaries) -> None:
    palette = colors(daemons)
    width, shifts = offsets(daemons)
    for offset, name in zip(shifts, daemons, strict=True):
        ran = [(i, sums[s.key][name]) for i, s in enumerate(shown) if name in sums[s.key]]
        if not ran:
            continue
        values = [max(get(summary, "cpu_s") or 0.0, 1e-4) for _, summary in ran]
        bars = ax.bar([i + offset for i, _ in ran], values, width, color=palette[name],
                      label=name)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(f"{value:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("daemon CPU (s, log)")
    ax.set_title("Daemon CPU time per scenario")
    ax.set_xticks(range(len(shown)), [s.label for s in shown])
    ax.legend(loc="upper left")
