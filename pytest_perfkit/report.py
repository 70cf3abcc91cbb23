"""The session's results as a terminal summary, a versioned JSON file and an HTML page.

The HTML page is self-contained (inline CSS and SVG, no scripts or external assets), so it
can be attached to a CI run and opened anywhere.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import platform
import sys
from typing import Any

from pytest_perfkit.verdicts import show

__all__ = ["NO_STATEMENTS", "REPORT_VERSION", "summary_lines", "write_reports"]

REPORT_VERSION = 1

#: Detail of a SQL budget in a test that ran no statement: listed as not applied, not measured.
NO_STATEMENTS = "no SQLAlchemy statement seen in the test body"
_SLOWEST = 10


def _ratio(result: dict[str, Any]) -> float:
    if not result.get("limit") or result.get("measured") is None:
        return 0.0
    return float(result["measured"]) / float(result["limit"])


def _counts(tests: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per budget kind: how many tests declared it and how many were measured."""
    table: dict[str, dict[str, int]] = {}
    for test in tests:
        applied = {r["budget"] for r in test.get("results", [])
                   if r["verdict"] != "not applied" and r["detail"] != NO_STATEMENTS}
        for name in test.get("budgets", {}):
            if name in ("n_plus_one", "full_scans", "rerun", "warmup"):
                continue
            row = table.setdefault(name, {"declared": 0, "measured": 0})
            row["declared"] += 1
            if name in applied:
                row["measured"] += 1
    return table


def summary_lines(data: dict[str, Any]) -> list[str]:
    tests: list[dict[str, Any]] = data["tests"]
    lines: list[str] = []
    counts = _counts(tests)
    measured = [t for t in tests if t["status"] == "measured"]
    coverage = ", ".join(f"{name} {row['measured']}/{row['declared']}"
                         for name, row in sorted(counts.items())) or "none declared"
    lines.append(f"{len(measured)} tests measured; budgets measured/declared: {coverage}")
    verdicts: dict[str, int] = {}
    for test in measured:
        for result in test.get("results", []):
            key = result["verdict"] if result["enforced"] or result["verdict"] == "ok" \
                else f"{result['verdict']} (warning only)"
            verdicts[key] = verdicts.get(key, 0) + 1
    if verdicts:
        lines.append("verdicts: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))
    if data.get("workers", 1) > 1:
        load = (data.get("load") or {}).get("end")
        lines.append(f"xdist: {data['workers']} workers; latency policy "
                     f"{data['settings'].get('xdist')}"
                     + (f"; load average {load[0]:.2f} at the end" if load else ""))
    if data.get("calibration"):
        lines.append(f"machine scale factor x{data['calibration']['factor']:.2f}")

    not_applied = [(t["nodeid"], t["status"]) for t in tests
                   if t["status"] != "measured" and t.get("budgets")]
    for test in measured:
        for result in test.get("results", []):
            if result["verdict"] == "not applied" or result["detail"] == NO_STATEMENTS:
                not_applied.append((test["nodeid"], f"{result['budget']}: {result['detail']}"))
    if not_applied:
        lines.append("budgets not applied:")
        lines.extend(f"  {nodeid}: {why}" for nodeid, why in not_applied)

    timed = [(r, t["nodeid"]) for t in measured for r in t.get("results", [])
             if r["unit"] == "s" and r["budget"] in ("latency", "cpu", "baseline")
             and r["measured"] is not None]  # not applied: nothing to rank
    timed.sort(key=lambda pair: -_ratio(pair[0]))
    if timed:
        lines.append("slowest against their budgets:")
        for result, nodeid in timed[:_SLOWEST]:
            lines.append(f"  {_ratio(result):6.0%}  {show(result['measured'], 's'):>8} / "
                         f"{show(result['limit'], 's'):<8} {result['budget']:<8} "
                         f"{result['verdict']:<12} {nodeid}")
    elif measured:
        slowest = sorted(measured, key=lambda t: -(t.get("latency") or {}).get("min", 0.0))
        lines.append("slowest tests (no latency budget):")
        for test in slowest[:5]:
            lines.append(f"  {show(test['latency']['min'], 's'):>8}  {test['nodeid']}")

    findings = [(t["nodeid"], f) for t in measured for f in (t.get("sql") or {}).get(
        "findings", [])]
    if findings:
        lines.append("SQL findings:")
        for nodeid, finding in findings[:30]:
            flag = "FAIL" if finding.get("enforced") else "warn"
            lines.append(f"  [{flag}] {nodeid}: {finding['text']}")
        if len(findings) > 30:
            lines.append(f"  ... {len(findings) - 30} more in the report")
    # A listener that could not read a statement counted less than ran: say so, once each.
    notes = sorted({note for t in measured for note in (t.get("sql") or {}).get("notes", [])})
    if notes:
        lines.append("SQL tracking notes (statements may be missing from the counts):")
        lines.extend(f"  {note}" for note in notes[:10])
    return lines


def _document(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": REPORT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **data,
    }


def write_reports(path: str, data: dict[str, Any]) -> list[str]:
    """Write JSON to ``path`` (or next to it for ``.html``) and the HTML page; return paths."""
    document = _document(data)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    written: list[str] = []
    json_path = path[:-5] + ".json" if path.endswith(".html") else path
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, default=str)
    written.append(json_path)
    if path.endswith(".html"):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(render_html(document))
        written.append(path)
    return written


_COLORS = {"ok": "#2e7d32", "within noise": "#f9a825", "over budget": "#c62828",
           "not applied": "#757575"}


def _bars(tests: list[dict[str, Any]]) -> str:
    """Inline SVG: one row per (test, budget), bar = measured / budget, line at 100%."""
    rows = [(t["nodeid"], r) for t in tests for r in t.get("results", [])
            if r.get("limit") and r.get("measured") is not None]
    if not rows:
        return "<p>No numeric budgets were measured.</p>"
    rows.sort(key=lambda pair: -_ratio(pair[1]))
    rows = rows[:60]
    height, label_w, chart_w = 22, 420, 360
    top = max(2.0, max(_ratio(r) for _, r in rows) * 1.05)
    scale = chart_w / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + chart_w + 140}" '
             f'height="{height * len(rows) + 30}" role="img" aria-label="budgets vs measured">']
    for index, (nodeid, result) in enumerate(rows):
        y = 20 + index * height
        ratio = _ratio(result)
        color = _COLORS.get(result["verdict"], "#555")
        # The test's name (not its path) fits; the full node id is the tooltip.
        short = f"{nodeid.split('::', 1)[-1]} [{result['budget']}]"
        if len(short) > 64:
            short = "…" + short[-63:]
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" '
                     f'font-size="11"><title>{html.escape(nodeid)}</title>'
                     f'{html.escape(short)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{max(1.0, ratio * scale):.1f}" '
                     f'height="{height - 8}" fill="{color}"><title>{html.escape(result["verdict"])}'
                     f'</title></rect>')
        parts.append(f'<text x="{label_w + ratio * scale + 4:.1f}" y="{y + 14}" font-size="11">'
                     f'{html.escape(show(result["measured"], result["unit"]))} / '
                     f'{html.escape(show(result["limit"], result["unit"]))}</text>')
    x100 = label_w + scale
    parts.append(f'<line x1="{x100:.1f}" y1="10" x2="{x100:.1f}" '
                 f'y2="{height * len(rows) + 22}" stroke="#000" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{x100 + 3:.1f}" y="12" font-size="10">budget</text></svg>')
    return "".join(parts)


def _cell(value: Any) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def render_html(document: dict[str, Any]) -> str:
    tests: list[dict[str, Any]] = document["tests"]
    rows = []
    for test in sorted(tests, key=lambda t: t["nodeid"]):
        for result in test.get("results", []) or [{}]:
            if not result:
                latency = test.get("latency") or {}
                rows.append("<tr>" + _cell(test["nodeid"]) + _cell(test["status"]) +
                            _cell("-") + _cell("-") + _cell(show(latency.get("min"), "s")) +
                            _cell("") + "</tr>")
                continue
            color = _COLORS.get(result["verdict"], "#555")
            rows.append(
                "<tr>" + _cell(test["nodeid"]) + _cell(result["budget"]) +
                _cell(show(result["limit"], result["unit"])) +
                f'<td style="color:{color};font-weight:bold">{html.escape(result["verdict"])}'
                f'{"" if result["enforced"] else " (warning)"}</td>' +
                _cell(show(result["measured"], result["unit"])) + _cell(result["detail"]) +
                "</tr>")
    findings = []
    for test in tests:
        for finding in (test.get("sql") or {}).get("findings", []):
            findings.append("<tr>" + _cell(test["nodeid"]) + _cell(finding["kind"]) +
                            _cell(finding["text"]) + "</tr>")
    summary = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(document))
    meta = html.escape(f"report v{document['version']} · {document['created']} · Python "
                       f"{document['python']} · {document['platform']} · "
                       f"{document['cpu_count']} CPUs · workers {document.get('workers', 1)}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>perfkit budgets</title>
<style>
body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse;margin:12px 0}}td,th{{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top}}th{{background:#f3f3f3}}
.meta{{color:#666}}
</style></head><body>
<h1>perfkit performance budgets</h1>
<p class="meta">{meta}</p>
<ul>{summary}</ul>
<h2>Budgets against measurements</h2>
{_bars(tests)}
<h2>All results</h2>
<table><tr><th>test</th><th>budget</th><th>limit</th><th>verdict</th><th>measured</th>
<th>detail</th></tr>{"".join(rows)}</table>
<h2>SQL findings</h2>
<table><tr><th>test</th><th>kind</th><th>finding</th></tr>{"".join(findings)}</table>
</body></html>
"""
