"""The report: Markdown tables in ``benchmarks.md`` and a bar chart in ``benchmarks.png``.

Every ratio is a speed-up against ``multiprocessing.Pool`` on the same
workload: above 1 is faster than the stdlib, for rates and start-up times alike.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .harness import CALL_DEADLINE, MAX_REPEAT, NOT_INSTALLED, UNSUPPORTED, Result, Settings
from .systems import DaskPoolSystem, MethodPoolSystem, StdlibPool, System
from .workloads import MB, PIPE_MESSAGES, START_METHODS, THROUGHPUT

BASELINE = StdlibPool.name
PACKAGES = (
    "methodpool",
    "cloudpickle",
    "dill",
    "multiprocess",
    "pathos",
    "loky",
    "joblib",
    "mpire",
    "pebble",
    "distributed",
)


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run itself."""

    command: str
    source: str
    date: str
    python: str
    machine: str
    cpus: int
    load: float
    """The 1-minute load average when the run started."""
    cpu_model: str
    settings: Settings
    seconds: float


class _Results:
    """Results by ``(system, workload)``, with the stdlib baseline at hand."""

    def __init__(self, results: Sequence[Result]) -> None:
        self.by_case = {(r.system, r.workload): r for r in results}
        self.workloads = list(dict.fromkeys(r.workload for r in results))

    def get(self, system: str, workload: str) -> Result | None:
        return self.by_case.get((system, workload))

    def item_count(self, system: str, workload: str) -> str:
        result = self.get(system, workload)
        return f"{result.items:,}" if result is not None and result.samples else ""

    def speedup(self, result: Result) -> float | None:
        base = self.get(BASELINE, result.workload)
        value = result.median
        if base is None or base.median is None or value is None:
            return None
        if result.unit == "s":
            return base.median / value
        return value / base.median


def _si(value: float, unit: str = "") -> str:
    space = " " if unit else ""
    for limit, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{space}{prefix}{unit}"
    return f"{value:.3g}{space}{unit}"


def _size(n_bytes: float) -> str:
    return _si(n_bytes, "B")


def _times(speedup: float) -> str:
    return f"×{speedup:.0f}" if speedup >= 100 else f"×{speedup:.2g}"


def _error_kind(error: str) -> str:
    return error.partition(":")[0]


def _cell(table: _Results, result: Result | None) -> str:
    if result is None:
        return ""
    if result.median is None:
        assert result.error is not None
        if result.error == UNSUPPORTED:
            return "—"
        if result.error == NOT_INSTALLED:
            return NOT_INSTALLED
        return f"✗ {_error_kind(result.error)}"
    value = f"{result.median * 1000:.0f} ms" if result.unit == "s" else _si(result.median)
    speedup = table.speedup(result)
    text = f"{value} {_times(speedup)}" if speedup is not None else value
    return text + (" ⚠" if result.error else "")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _grid(
    systems: Sequence[System], workloads: Sequence[str], cell: Callable[[str, str], str]
) -> list[str]:
    lines = [_row(["system", *(f"`{w}`" for w in workloads)])]
    lines.append(_row(["---", *("---:" for _ in workloads)]))
    for system in systems:
        lines.append(_row([system.name, *(cell(system.name, w) for w in workloads)]))
    return lines


def _failures(results: Sequence[Result]) -> list[str]:
    failed = [r for r in results if r.error and r.error not in (NOT_INSTALLED, UNSUPPORTED)]
    if not failed:
        return ["No case failed."]
    return [f"- `{r.workload}` on {r.system}: {r.error}" for r in failed]


def _counters(table: _Results, systems: Sequence[System]) -> list[str]:
    pools = [s.name for s in systems if isinstance(s, MethodPoolSystem)]
    rows = []
    for workload in table.workloads:
        cells = []
        for name in pools:
            result = table.get(name, workload)
            if result is None or result.counters is None or not result.items:
                cells.append("")
                continue
            c = result.counters
            cells.append(
                f"{_size(c.bytes_written / result.items)} · {c.frames_written} · "
                f"{c.callables_serialized}"
            )
        if any(cells):
            rows.append(_row([f"`{workload}`", *cells]))
    if not rows:
        return []
    return [_row(["workload", *pools]), _row(["---", *("---:" for _ in pools)]), *rows]


def _pipe(table: _Results) -> list[str]:
    rows = []
    for workload, size in PIPE_MESSAGES.items():
        result = table.get("Pipe", workload)
        if result is None:
            continue
        if result.median is None:
            rows.append(_row([f"`{workload}`", _size(size), f"✗ {result.error}", ""]))
        else:
            rate = result.median
            cells = [f"`{workload}`", _size(size), f"{_si(rate)}/s", f"{_size(rate * size)}/s"]
            rows.append(_row(cells))
    if not rows:
        return []
    lines = [_row(["workload", "message", "messages", "bytes"]), _row(["---", *["---:"] * 3])]
    lines += rows
    bulk = table.get("Pipe", "pipe/2MB")
    if bulk is not None and bulk.median is not None:
        rate = bulk.median * PIPE_MESSAGES["pipe/2MB"]
        lines += [
            "",
            f"A task that carries 2 MB through this pipe cannot run faster than "
            f"{rate / (2 * MB):.3g} tasks/s; one that carries 20 MB, {rate / (20 * MB):.3g}.",
        ]
    return lines


def _reading(table: _Results, systems: Sequence[System]) -> list[str]:
    lines = []
    auto = MethodPoolSystem.name_for("auto")
    for workload in table.workloads:
        ranked = [
            r
            for s in systems
            if (r := table.get(s.name, workload)) is not None and r.median is not None
        ]
        if not ranked:
            continue
        lower_is_better = ranked[0].unit == "s"
        ranked.sort(key=lambda r: r.median or 0.0, reverse=not lower_is_better)
        parts = [f"best {ranked[0].system} ({_cell(table, ranked[0])})"]
        mine = table.get(auto, workload)
        if mine is not None and mine is not ranked[0]:
            parts.append(f"{auto} {_cell(table, mine)}")
        broken = [
            s.name
            for s in systems
            if (r := table.get(s.name, workload)) is not None
            and r.median is None
            and r.error not in (NOT_INSTALLED, UNSUPPORTED)
        ]
        if broken:
            parts.append("failed: " + ", ".join(broken))
        lines.append(f"- `{workload}`: " + "; ".join(parts) + ".")
    pipe = table.get("Pipe", "pipe/2MB")
    base = table.get(BASELINE, "method-20MB/imap1")
    heavy = table.get(auto, "method-20MB/imap1")
    if pipe and pipe.median and base and base.median:
        ceiling = pipe.median * PIPE_MESSAGES["pipe/2MB"] / (20 * MB)
        line = (
            f"- A pool that sends the 20 MB instance with every task is capped by the pipe "
            f"at {ceiling:.3g} tasks/s; {BASELINE} does {base.median:.3g}"
        )
        if heavy and heavy.counters and heavy.items:
            per_task = heavy.counters.bytes_written / heavy.items
            line += f"; {auto} wrote {_size(per_task)} per task to its task pipe"
        lines.append(line + ".")
    return lines


def _cluster(table: _Results) -> list[str]:
    """DaskPool's per-task overhead and chunked throughput, beside MethodPool's."""
    auto = MethodPoolSystem.name_for("auto")
    rows = []
    for system in (auto, DaskPoolSystem.name):
        single = table.get(system, "function/imap1")
        bulk = table.get(system, "function/map")
        startup = table.get(system, "startup/spawn")
        if single is None or single.median is None:
            continue
        cells = [system, f"{1000 / single.median:.3g} ms"]
        cells.append(f"{_si(bulk.median)}/s" if bulk and bulk.median else "")
        cells.append(f"{startup.median:.2g} s" if startup and startup.median else "")
        rows.append(_row(cells))
    if len(rows) < 2:
        return []
    header = ["system", "per task (`imap`, chunksize 1)", "chunked `map`", "start (spawn)"]
    return [_row(header), _row(["---", "---:", "---:", "---:"]), *rows]


def _targets(table: _Results, systems: Sequence[System]) -> list[str]:
    """MethodPool[auto] against the targets set for it, each with its measured value."""
    auto = MethodPoolSystem.name_for("auto")

    def rate(system: str, workload: str) -> float | None:
        result = table.get(system, workload)
        return result.median if result is not None else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows: list[tuple[str, str, float | None, float, bool]] = []
    # (what, compared with, measured ratio, target, higher is the goal)
    rows.append(
        (
            "`method-2MB/imap1`",
            BASELINE + " on the same",
            ratio(rate(auto, "method-2MB/imap1"), rate(BASELINE, "method-2MB/imap1")),
            30.0,
            True,
        )
    )
    rows.append(
        (
            "`method-2MB/imap1`",
            f"{auto} on `function/imap1`",
            ratio(rate(auto, "method-2MB/imap1"), rate(auto, "function/imap1")),
            1 / 1.5,
            True,
        )
    )
    for workload in ("lambda/imap1", "closure/imap1"):
        rows.append(
            (
                f"`{workload}`",
                f"{BASELINE} on `function/imap1`",
                ratio(rate(auto, workload), rate(BASELINE, "function/imap1")),
                0.9,
                True,
            )
        )
        peers = [
            r
            for s in systems
            if not s.name.startswith(("MethodPool", "DaskPool", "methodpool."))
            and (r := rate(s.name, workload)) is not None
        ]
        rows.append(
            (
                f"`{workload}`",
                "the fastest peer that runs it",
                ratio(rate(auto, workload), max(peers) if peers else None),
                3.0,
                True,
            )
        )
    for workload in ("function/map", "function/imap1"):
        rows.append(
            (
                f"`{workload}`",
                BASELINE,
                ratio(rate(auto, workload), rate(BASELINE, workload)),
                0.95,
                True,
            )
        )
    for method in START_METHODS:
        workload = f"startup/{method}"
        rows.append(
            (
                f"`{workload}` (time)",
                BASELINE,
                ratio(rate(auto, workload), rate(BASELINE, workload)),
                1.2,
                False,
            )
        )
    lines = [
        _row(["workload", "against", "measured", "target", "met"]),
        _row(["---", "---", "---:", "---:", "---"]),
    ]
    for what, against, measured, target, higher in rows:
        if measured is None:
            continue
        met = measured >= target if higher else measured <= target
        goal = f"≥ {target:.2g}×" if higher else f"≤ {target:.2g}×"
        lines.append(_row([what, against, f"{measured:.2f}×", goal, "yes" if met else "**no**"]))
    heavy = table.get(auto, "method-20MB/imap1")
    if heavy is not None and heavy.counters is not None and heavy.items:
        per_task = heavy.counters.bytes_written / heavy.items
        met = "yes" if per_task < 1000 else "**no**"
        cells = ["`method-20MB/imap1`", "bytes to the task pipe per task"]
        lines.append(_row([*cells, _size(per_task), "< 1 kB", met]))
    return lines if len(lines) > 2 else []


def _versions() -> str:
    found = []
    for package in PACKAGES:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def _apis(systems: Sequence[System]) -> list[str]:
    lines = [
        _row(["system", "map", "imap(chunksize=1)", "workers start (throughput)", "start-up"]),
        _row(["---"] * 5),
    ]
    for s in systems:
        start = "fork" if "fork" in s.start_methods else s.default_start
        methods = ", ".join(s.start_methods) or "no start-method option"
        lines.append(_row([s.name, f"`{s.map_call}`", f"`{s.imap_call}`", start, methods]))
    return lines


def render_markdown(results: Sequence[Result], systems: Sequence[System], info: RunInfo) -> str:
    """The whole ``benchmarks.md``."""
    table = _Results(results)
    throughput = [w.name for w in THROUGHPUT if w.name in table.workloads]
    startup = [f"startup/{m}" for m in START_METHODS if f"startup/{m}" in table.workloads]
    s = info.settings
    out = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/` (how to run it, and what each number means: "
        "[benchmarks/README.md](../benchmarks/README.md)). Reproduce with:",
        "",
        "```",
        f"pip install -e '.[bench]' && {info.command}",
        "```",
        "",
        f"- date: {info.date}; total run time: {info.seconds:.0f} s; "
        f"source: `{info.source}` (git describe)",
        f"- {info.python}; {info.machine}; {info.cpu_model}; `nproc` = {info.cpus}; "
        f"1-minute load average at the start: {info.load:.1f} (other processes competing "
        "for the CPUs make every number noisier)",
        f"- {_versions()}",
        f"- {s.workers} workers per pool; median of at least {s.repeat} timed call(s) per "
        f"throughput case (calls shorter than the box repeat until ~{2 * s.box:g} s are "
        f"measured, at most {MAX_REPEAT}) and of {s.startup_repeat} fresh pools per "
        "start-up case; "
        f"each call time-boxed to ~{s.box:g} s (fewer items for slower systems; item "
        f"counts × {s.item_scale:g}); a call that takes over {CALL_DEADLINE:g} s is "
        "stopped and recorded as failed.",
        "",
        "Cells: median, then the speed-up against multiprocessing.Pool on the same "
        "workload (×2 = twice as fast, ×0.5 = half as fast; for start-up, 1/time). "
        "✗ = failed (reasons below), ⚠ = measured, then failed, — = not supported.",
    ]
    if throughput:
        out += ["", "## Throughput (tasks/s, higher is better)", ""]
        out += _grid(systems, throughput, lambda s, w: _cell(table, table.get(s, w)))
        out += [
            "",
            "Items per timed call: the workload's count, or fewer where the system "
            "needed longer than the time box:",
            "",
            *_grid(systems, throughput, table.item_count),
        ]
    if startup:
        out += ["", "## Start-up: create the pool + first result (lower is better)", ""]
        out += _grid(systems, startup, lambda s, w: _cell(table, table.get(s, w)))
    pipe = _pipe(table)
    if pipe:
        out += [
            "",
            "## Physical reference: one `multiprocessing.Pipe`, one way",
            "",
            "Raw `send_bytes` of one message after another to a forked reader.",
            "",
            *pipe,
        ]
    counters = _counters(table, systems)
    if counters:
        out += [
            "",
            "## MethodPool's task pipe (last timed call)",
            "",
            "Each cell: bytes written to the task pipe per task · frames written per "
            "call (a frame is one task, or one chunk of tasks) · callables serialized "
            "per call.  Read from the pool's private totals, `pool._counters` "
            "(`methodpool._stats.PoolCounters`), which the tests read too.",
            "",
            *counters,
        ]
    cluster = _cluster(table)
    if cluster:
        out += [
            "",
            "## Cluster mode: DaskPool on a local cluster",
            "",
            "`DaskPool(2)` starts a Dask `LocalCluster` of 2 single-threaded worker "
            "processes on 127.0.0.1 (the same machine, so this is the engine's own "
            "overhead, without a network). Per task: wall time per item of "
            "`function/imap1`; chunked: items/s of `function/map` (DaskPool chunks "
            "by the stdlib rule); start: `startup/spawn`, pool creation to first result.",
            "",
            *cluster,
        ]
    targets = _targets(table, systems)
    if targets:
        out += [
            "",
            "## MethodPool[auto] against its targets",
            "",
            "The targets of the performance issue, from this run's medians: a ratio is "
            "MethodPool[auto]'s rate over the other's (for start-up, its time over the "
            "other's).",
            "",
            *targets,
        ]
    out += ["", "## Reading", "", *_reading(table, systems)]
    out += ["", "## Failures", "", *_failures(results)]
    out += ["", "## Calls used", "", *_apis(systems), ""]
    return "\n".join(out)


def draw_chart(
    results: Sequence[Result], systems: Sequence[System], info: RunInfo, path: Path
) -> None:
    """One log-scale bar panel per workload (throughput and start-up), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    table = _Results(results)
    panels = [w for w in table.workloads if not w.startswith("pipe/")]
    if not panels:
        return
    names = [s.name for s in systems]
    colors = [
        "tab:orange"
        if n == BASELINE
        else "tab:blue"
        if n.startswith(("MethodPool", "methodpool."))
        else "0.6"
        for n in names
    ]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(16, 3.8 * rows), squeeze=False)
    for axis, workload in zip(axes.flat, panels, strict=False):
        unit = "tasks/s (higher is better)"
        values: list[float] = []
        for i, name in enumerate(names):
            result = table.get(name, workload)
            if result is None:
                continue
            if result.unit == "s":
                unit = "ms (lower is better)"
            if result.median is None:
                assert result.error is not None
                label = "—" if result.error == UNSUPPORTED else _cell(table, result)
                axis.text(
                    0.01,
                    i,
                    label,
                    transform=axis.get_yaxis_transform(),
                    va="center",
                    fontsize=7,
                    color="tab:red",
                )
                continue
            value = result.median * 1000 if result.unit == "s" else result.median
            values.append(value)
            axis.barh(i, value, color=colors[i])
            axis.text(value, i, f" {_si(value)}", va="center", fontsize=6)
        axis.set_xscale("log")
        if values:
            # Whole decades, with room for the labels: bar lengths then compare.
            low = 10 ** math.floor(math.log10(min(values)))
            high = 10 ** math.ceil(math.log10(max(values) * 3))
            axis.set_xlim(low, high)
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_ylim(len(names) - 0.5, -0.5)
        axis.set_title(workload, fontsize=10)
        axis.set_xlabel(unit, fontsize=8)
        axis.tick_params(axis="x", labelsize=7)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(
        f"{info.settings.workers} workers, median of {info.settings.repeat}; "
        f"{info.python}, nproc={info.cpus}, {info.date}",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=90)
    plt.close(figure)


def dataplane_section(markdown: Path) -> str:
    """The data-plane section of an existing report, or ``""``."""
    from .dataplane import BEGIN, END

    text = markdown.read_text() if markdown.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    return text[start : end + len(END)] + "\n" if 0 <= start < end else ""


def write_report(
    results: Sequence[Result], systems: Sequence[System], info: RunInfo, output_dir: Path
) -> list[Path]:
    """Write ``benchmarks.md`` and ``benchmarks.png`` into ``output_dir``; return their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = output_dir / "benchmarks.md"
    text = render_markdown(results, systems, info)
    # The data-plane section is python -m benchmarks.dataplane's: kept as it is.
    kept = dataplane_section(markdown)
    markdown.write_text(text + ("\n" + kept if kept else ""))
    chart = output_dir / "benchmarks.png"
    draw_chart(results, systems, info, chart)
    return [markdown, chart]
