"""Every benchmark, side by side in one run, printed as one table (`make bench`).

Each figure is measured now, on this machine; the targets and the anchors
(published or measured-elsewhere figures of other tools) are in the last column.
Pass `--markdown` to print the table as Markdown for the README.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import bench_asgi  # noqa: E402
import bench_cli  # noqa: E402
import bench_emitter  # noqa: E402
import bench_wsgi  # noqa: E402
from _common import machine  # noqa: E402

Row = tuple[str, str, str, str]  # area, measure, result, target or anchor


def asgi_rows() -> list[Row]:
    rows: list[Row] = []
    for r in bench_asgi.run():
        name = r["variant"] + (f" {r['path']}" if r.get("path") else "")
        if r["overhead_us"] is None:
            rows.append(("ASGI", name, f"{r['median_us']:.2f} µs", "≤ 10 µs"))
            continue
        ours = r["variant"].startswith(("ASGITelemetry", "ours"))
        target = "≤ +1.5 µs" if ours else "anchor"
        rows.append(("ASGI", name, f"{r['median_us']:.2f} µs ({r['overhead_us']:+.2f})", target))
    return rows


def wsgi_rows() -> list[Row]:
    rows: list[Row] = []
    for r in bench_wsgi.run():
        if r["variant"] == "WSGITelemetryMiddleware":
            target = "≤ +2 µs"
        elif r["variant"].startswith("WSGITelemetryMiddleware"):
            target = "pass-through when off"
        else:
            target = "anchor"
        rows.append(
            ("WSGI", r["variant"], f"{r['median_us']:.2f} µs ({r['overhead_us']:+.2f})", target)
        )
    return rows


def emitter_rows() -> list[Row]:
    return [
        ("emitter", name.removeprefix("emitter: "), value, target)
        for name, value, target in bench_emitter.run()
    ]


def cli_rows() -> list[Row]:
    rows: list[Row] = []
    for r in bench_cli.run():
        target = r.get("target_added_ms")
        if "in-process" in r["variant"]:
            note = "for comparison: exit_handoff=False"
        else:
            note = "" if target is None else f"≤ +{target:g} ms"
        rows.append(
            (
                "CLI",
                f"process exit, {r['variant']}",
                f"{r['median_ms']:.0f} ms ({r['added_ms']:+.0f})",
                note,
            )
        )
    return rows


def load_rows() -> list[Row]:
    try:
        import bench_load
    except ImportError:
        return []
    rows: list[Row] = []
    for r in bench_load.run():
        rows.append(
            ("load", str(r.get("variant", "")), str(r.get("result", "")), str(r.get("target", "")))
        )
    return rows


def print_rows(rows: list[Row], markdown: bool) -> None:
    if markdown:
        print("| area | measure | result | target / anchor |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))


def main() -> int:
    markdown = "--markdown" in sys.argv
    started = time.perf_counter()
    rows: list[Row] = []
    for section in (asgi_rows, wsgi_rows, emitter_rows, cli_rows, load_rows):
        rows.extend(section())
    print_rows(rows, markdown)
    print(f"\nmachine: {machine()}; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
