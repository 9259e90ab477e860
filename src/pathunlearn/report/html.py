"""RUN_DIR/report.html: one self-contained page (figures embedded as base64 PNG, inline CSS and
SVG, no scripts, no external resources) with the table, the recency verdict, the pairwise
distances between paths, the figures, the probes, the resolved config, versions, device and
wall times.

The first screen (at 1400 x 900): the answer in a sentence, the verdict table and the paper's
Figure 1 drawn as inline SVG (a panel per method; hovering or focusing a step shows each path's
value there, by CSS alone; the same numbers in a table below it and, as JSON, in the figure's
``data-values`` attribute). Then the sections, each a ``<details>`` (the table and figures
open, the diagnostics closed) that the table of contents links into: a browser opens a closed
one when a link targets its content (the HTML standard's "ancestor details revealing").

Every string that comes from data, config or directory names goes through ``html.escape``;
JSON in an attribute has ``</`` written ``<\\/`` as well.
"""

from __future__ import annotations

import base64
import html
import json
import platform
import time
from importlib import metadata
from pathlib import Path

from pathunlearn import metrics as M
from pathunlearn.config import dump_config
from pathunlearn.files import write_text
from pathunlearn.report.model import RecencyVerdict, Verdict, observed_count
from pathunlearn.report.pairwise import pair_summary, summary_cells, summary_headers
from pathunlearn.report.results import Results
from pathunlearn.report.tables import (
    NA,
    NOT_MEASURED,
    SATURATION,
    display_columns,
    display_value,
)
from pathunlearn.rundir import CONFIG, FIGURE_INDEX, FIGURES, PHASES, REPORT_HTML
from pathunlearn.timing import sum_phases

PACKAGES = ("torch", "transformers", "peft", "pathunlearn")

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1360px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; vertical-align: top; }
td { white-space: nowrap; } td.text, td.na { white-space: normal; } .wide { overflow-x: auto; }
td.path { min-width: 9em; }
th { background: #f2f2f2; font-size: .85em; } td.text, th.text { text-align: left; }
tr.last td { font-weight: 600; }
.verdict { padding: .6em .9em; margin: .5em 0; border-left: 4px solid #888; background: #f7f7f7; }
.verdict.yes { border-color: #2a7; } .verdict.no { border-color: #c63; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: .6em 0; flex: 1 1 480px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
.note { color: #555; font-size: .9em; }
.answer { font-size: 1.25em; font-weight: 600; margin: .3em 0; }
.glance-row { display: flex; gap: 1.2em; align-items: flex-start; flex-wrap: wrap; }
figure.glance { flex: 1 1 520px; margin: .4em 0; } figure.glance img { max-height: 430px; }
tr.yes td:nth-child(2) { color: #196; } tr.no td:nth-child(2) { color: #a40; }
.toc { font-size: .9em; margin: .6em 0; }
span.ci { display: block; font-size: .8em; color: #555; } td.path { word-break: break-word; }
details.section { margin: 1em 0; } details.section > summary { cursor: pointer; }
details.section > summary h2 { display: inline; border: 0; }
details.section > summary::after { content: ""; display: block; border-bottom: 1px solid #ccc; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(660px, 1fr)); }
.figures figure.full { grid-column: 1 / -1; } .figures figure img { display: block; }
.panels { display: flex; flex-wrap: wrap; gap: .4em 1em; }
svg.plot { width: 440px; height: 290px; font-size: 12px; font-family: system-ui, sans-serif; }
svg.plot .axis { stroke: #444; fill: none; } svg.plot .grid { stroke: #e4e4e4; }
svg.plot .hv .band { fill: transparent; } svg.plot .hv .tip, svg.plot .hv .cursor,
svg.plot .hv circle { visibility: hidden; } svg.plot .hv:hover .tip,
svg.plot .hv:focus .tip, svg.plot .hv:hover .cursor, svg.plot .hv:focus .cursor,
svg.plot .hv:hover circle, svg.plot .hv:focus circle { visibility: visible; }
svg.plot .tip rect { fill: #fff; stroke: #888; opacity: .95; } svg.plot .cursor { stroke: #888; }
.legend { font-size: .9em; margin: .2em 0; } .legend span { margin-right: 1.2em; }
.legend i { display: inline-block; width: 1.6em; height: .3em; vertical-align: middle;
            margin-right: .35em; }
"""


def write_report(results: Results, *, figures: list[dict] | None = None,
                 phases: dict[str, float] | None = None, extra: dict | None = None,
                 probes: list | None = None, lead: list[str] | None = None,
                 drawn: bool = True) -> Path:
    """Write RUN_DIR/report.html (atomically) and return its path.

    ``results``: from :func:`pathunlearn.report.results.build_results`; ``figures``: entries
    of figures/index.json (read from there when omitted); ``phases``: wall seconds per phase
    (RUN_DIR/phases.json when omitted); ``extra``: more facts to show (e.g.
    ``{"device": "cuda:0 (NVIDIA H200)"}``); ``probes``: the probe sets to show (default: the
    ones the run tracked, RUN_DIR/probes.json); ``lead``: HTML sections
    (already escaped) shown right after the header, e.g. the superficial-forgetting study.
    ``drawn=False``: the figures were not drawn (``--no-figures``), and the page says so.
    """
    run_dir = results.run_dir
    figures = _figure_index(run_dir) if figures is None else figures
    phases = phases if phases is not None else _read_json(run_dir / PHASES)
    sections = [  # (anchor, HTML starting with its <h2>, open at first)
        *((f"lead{i}", x, True) for i, x in enumerate(lead or [], 1)),
        ("table", _table_section(results), True),
        ("field", _field_section(results), True),
        ("muse", _muse_section(results), True),
        ("figures", _figure_section(run_dir, figures, drawn), True),
        ("pairwise", _pairwise_section(results), True),
        ("control", _matched_section(results), True),
        ("relearning", _relearn_section(results), True),
        ("verdicts", _verdict_section(results), False),
        ("saturation", _saturation_table(results), False),
        ("cells", _cells_section(results), False),
        ("probes", _probe_section(results.run.probes if probes is None else probes,
                                  results.run.plan.probe_notes), False),
        ("environment", _environment_section(results, phases, extra or {}), False),
        ("config", _config_section(results), False),
    ]
    body = "\n".join([_header(run_dir, results), _glance_section(results),
                      _with_contents([(k, x, o) for k, x, o in sections if x])])
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>pathunlearn report: {_e(run_dir.name)}</title><style>{CSS}</style></head>"
            "<body>\n" + body + "\n</body></html>\n")
    out = run_dir / REPORT_HTML
    write_text(out, page)
    return out


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _figure_index(run_dir: Path) -> list[dict]:
    index = _read_json(run_dir / FIGURES / FIGURE_INDEX)
    if isinstance(index, list):
        return index
    return [{"method": "", "kind": p.stem, "caption": "", "files": [p.name]}
            for p in sorted((run_dir / FIGURES).glob("*.png"))]


# ---------------------------------------------------------------------------- sections


def _header(run_dir: Path, results: Results) -> str:
    t = results.table
    methods = list(dict.fromkeys(r.method for r in t.rows))
    paths = list(dict.fromkeys(r.path_label for r in t.rows))
    seeds = sorted({c.seed for c in t.cells})
    return (f"<h1>pathunlearn report: {_e(run_dir.name)}</h1>"
            f"<p>Run directory <code>{_e(run_dir)}</code>; generated "
            f"{_e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}. {len(t.cells)} finished cells: "
            f"{len(paths)} paths × {len(methods)} methods ({_e(', '.join(methods))}) × "
            f"{len(seeds)} seeds ({_e(', '.join(map(str, seeds)))}); forget stage "
            f"<b>{_e(t.forget_stage)}</b>.</p>")


def _with_contents(sections: list[tuple[str, str, bool]]) -> str:
    """A table of contents, then each ``(anchor, html, open)`` section as a ``<details>``
    whose summary is the section's leading ``<h2>`` and whose content has the id ``anchor``:
    the contents link there, and following a link opens a closed section (no script)."""
    import re

    links, parts = [], []
    for anchor, section, is_open in sections:
        m = re.match(r"\s*<h2>(.*?)</h2>(.*)", section, re.DOTALL)
        title, rest = (m.group(1), m.group(2)) if m else (_e(anchor), section)
        links.append(f"<a href=\"#{anchor}\">{title}</a>")
        parts.append(f"<details class=\"section\" id=\"section-{anchor}\""
                     f"{' open' if is_open else ''}><summary><h2>{title}</h2></summary>"
                     f"<div id=\"{anchor}\">{rest}</div></details>")
    toc = ("<nav class=\"toc\"><b>Contents</b> (closed sections open when followed): "
           + " · ".join(links) + "</nav>")
    return toc + "\n" + "\n".join(parts)


def _glance_section(results: Results) -> str:
    """The first screen: the answer in a sentence, the verdict table (methods x without /
    with the matched-start control) and the forget metric over unlearning per path (the
    paper's Figure 1, :func:`_main_figure`), above the fold at 1400 x 900."""
    recency = [v for v in results.verdicts if v.kind == "recency"]
    if not recency:
        return ""
    matched = {(v.method, v.sweep): v for v in (results.matched.verdicts
                                                if results.matched is not None else [])}
    answer = f"Recency effect observed for {observed_count(recency)}"
    if matched:
        answer += f"; with the matched-start control for {observed_count(list(matched.values()))}"
    rows = "".join(_glance_row(v, matched.get((v.method, v.sweep))) for v in recency)
    head = ("<tr><th class=\"text\">method</th><th class=\"text\">recency effect</th>"
            "<th>forget-last path</th><th>closest other path</th>"
            + ("<th class=\"text\">with the matched-start control</th>" if matched else "")
            + "<th>seeds</th></tr>")
    return (f"<section class=\"glance\"><p class=\"answer\">{_e(answer)}.</p>"
            f"<table id=\"glance-table\">{head}{rows}</table>{_main_figure(results)}</section>")


# the first screen's figure, inline SVG: a panel per method, PANEL pixels, plot area inset by
# MARGIN (left, right, top, bottom); the paths' colours are the PNG figures' (matplotlib C0..)
PANEL = (440, 290)
MARGIN = (64, 12, 26, 40)


def _main_figure(results: Results) -> str:
    """The paper's Figure 1 as inline SVG (:func:`_svg_panel` per method, one y-axis for all),
    the legend above it, its caption, and its numbers: as JSON in ``data-values`` and, for
    reading without a pointer, in a table (:func:`_values_table`)."""
    from pathunlearn.report.plots import main_series

    panels = main_series(results)
    if not panels:
        return ""
    values = [v for p in panels for path in p["paths"]
              for v in (*path["mean"], *(x for seed in path["seeds"] for x in seed))
              if v is not None]
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
    legend = {path["label"]: path for p in panels for path in p["paths"]}
    keys = "".join(f"<span><i style=\"background:{_e(path['color'])}\"></i>p={path['position']}"
                   f"{' (last)' if path['last'] else ''}: {_e(label)}</span>"
                   for label, path in legend.items())
    seeds = len({c.seed for c in results.cells if c.diverged_at is None})
    data = json.dumps(panels).replace("</", "<\\/")
    return (f"<figure id=\"glance-figure\" class=\"glance\" data-values=\"{_e(data)}\">"
            f"<div class=\"legend\">{keys}</div><div class=\"panels\">"
            + "".join(_svg_panel(p, (lo - pad, hi + pad)) for p in panels)
            + f"</div><figcaption><b>{_e(panels[0]['metric'])}</b> (per-token average "
            "log-probability of the forget label: unlearn target + paraphrases; higher = still "
            f"refuses) vs unlearning step, a curve per path; mean of {seeds} seed(s) "
            + ("with the 95% band and each seed as a thin line" if seeds > 1 else "")
            + ". Point at (or tab to) a step for the values there; all of them in the table "
            f"below.</figcaption>{_values_table(panels)}</figure>")


def _svg_panel(panel: dict, ylim: tuple[float, float]) -> str:
    """One method's panel: grid and ticks, per path each seed (thin), the band of the 95%
    interval (cut at ``ylim``) and the mean (thick; thicker for the forget-last path), then
    a hover target per step (:func:`_svg_hover`)."""
    (w, h), (left, right, top, bottom) = PANEL, MARGIN
    steps = panel["steps"]
    s0, s1 = steps[0], steps[-1]

    def x(step: float) -> float:
        return left + (step - s0) / ((s1 - s0) or 1) * (w - left - right)

    def y(v: float) -> float:
        v = min(max(v, ylim[0]), ylim[1])
        return top + (ylim[1] - v) / (ylim[1] - ylim[0]) * (h - top - bottom)

    parts = [f"<text x=\"{left}\" y=\"16\" font-weight=\"600\">{_e(panel['method'])}"
             f"{_e(' — ' + panel['sweep'] if panel['sweep'] else '')}</text>"]
    for t in _ticks(*ylim):
        parts.append(f"<line class=\"grid\" x1=\"{left}\" x2=\"{w - right}\" y1=\"{y(t):.1f}\" "
                     f"y2=\"{y(t):.1f}\"/><text x=\"{left - 6}\" y=\"{y(t) + 4:.1f}\" "
                     f"text-anchor=\"end\">{t:g}</text>")
    for t in _ticks(s0, s1, integer=True):
        parts.append(f"<text x=\"{x(t):.1f}\" y=\"{h - bottom + 16}\" text-anchor=\"middle\">"
                     f"{t:g}</text>")
    parts.append(f"<rect class=\"axis\" x=\"{left}\" y=\"{top}\" width=\"{w - left - right}\" "
                 f"height=\"{h - top - bottom}\"/><text x=\"{(left + w - right) / 2}\" "
                 f"y=\"{h - 6}\" text-anchor=\"middle\">unlearning step</text>"
                 f"<text transform=\"translate(14 {(top + h - bottom) / 2}) rotate(-90)\" "
                 "text-anchor=\"middle\">forget label log-prob</text>")
    for path in panel["paths"]:
        parts.append(_svg_path(path, steps, x, y))
    parts += _svg_hover(panel, x, y)
    return (f"<svg class=\"plot\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\""
            f"{_e(panel['method'])}: {_e(panel['metric'])} vs unlearning step\">"
            + "".join(parts) + "</svg>")


def _svg_path(path: dict, steps: list[int], x, y) -> str:
    """One path's seeds, band and mean (gaps where it has no value)."""
    color = _e(path["color"])

    def line(values, width: float, opacity: float = 1.0) -> str:
        points = [f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, values, strict=True)
                  if v is not None]
        return (f"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" "
                f"stroke-opacity=\"{opacity}\" points=\"{' '.join(points)}\"/>")

    out = [line(seed, 0.8, 0.45) for seed in path["seeds"]] if len(path["seeds"]) > 1 else []
    band = [(s, m, hw) for s, m, hw in zip(steps, path["mean"], path["half"], strict=True)
            if m is not None and hw is not None]
    if band:
        edge = [f"{x(s):.1f},{y(m + hw):.1f}" for s, m, hw in band]
        edge += [f"{x(s):.1f},{y(m - hw):.1f}" for s, m, hw in reversed(band)]
        out.append(f"<polygon fill=\"{color}\" fill-opacity=\"0.12\" points=\"{' '.join(edge)}\"/>")
    out.append(line(path["mean"], 2.8 if path["last"] else 1.8))
    return "".join(out)


def _svg_hover(panel: dict, x, y) -> list[str]:
    """Per step a transparent band over the plot (to the midpoints with its neighbours) that,
    hovered or focused, shows a cursor line, each path's mean as a dot and a box with the step
    and every path's mean ± 95% half-width (also the band's tooltip, ``<title>``)."""
    (w, h), (left, right, top, bottom) = PANEL, MARGIN
    steps, out = panel["steps"], []
    for i, step in enumerate(steps):
        lines = [f"step {step}"] + [
            f"p{p['position']}: {_number(p['mean'][i], p['half'][i])}" for p in panel["paths"]]
        x0 = left if i == 0 else (x(steps[i - 1]) + x(step)) / 2
        x1 = w - right if i == len(steps) - 1 else (x(step) + x(steps[i + 1])) / 2
        width, height = 16 + 7.2 * max(map(len, lines)), 8 + 16 * len(lines)
        tx = x(step) + 8 if x(step) + 8 + width <= w else x(step) - 8 - width
        dots = "".join(f"<circle cx=\"{x(step):.1f}\" cy=\"{y(p['mean'][i]):.1f}\" r=\"3.5\" "
                       f"fill=\"{_e(p['color'])}\"/>" for p in panel["paths"]
                       if p["mean"][i] is not None)
        text = "".join(f"<text x=\"{tx + 8:.1f}\" y=\"{top + 18 + 16 * k}\">{_e(t)}</text>"
                       for k, t in enumerate(lines))
        out.append(f"<g class=\"hv\" tabindex=\"0\" data-step=\"{step}\"><title>"
                   f"{_e('; '.join(lines))}</title><rect class=\"band\" x=\"{x0:.1f}\" "
                   f"y=\"{top}\" width=\"{x1 - x0:.1f}\" height=\"{h - top - bottom}\"/>"
                   f"<line class=\"cursor\" x1=\"{x(step):.1f}\" x2=\"{x(step):.1f}\" "
                   f"y1=\"{top}\" y2=\"{h - bottom}\"/>{dots}<g class=\"tip\"><rect "
                   f"x=\"{tx:.1f}\" y=\"{top + 2}\" width=\"{width:.1f}\" height=\"{height}\" "
                   f"rx=\"3\"/>{text}</g></g>")
    return out


def _number(mean: float | None, half: float | None) -> str:
    """A mean and its 95% half-width, as the first screen's figure shows them."""
    if mean is None:
        return "—"
    return f"{mean:.3f}" + ("" if half is None else f" ± {half:.3f}")


def _ticks(lo: float, hi: float, integer: bool = False) -> list[float]:
    """About five round tick values in [lo, hi] (steps of 1, 2 or 5 times a power of 10)."""
    import math

    raw = (hi - lo) / 5 or 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(1, round(step)) if integer else step
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def _values_table(panels: list[dict]) -> str:
    """The first screen figure's numbers: a row per step, a column per method and path."""
    columns = [(p, path) for p in panels for path in p["paths"]]
    head = "".join(f"<th>{_e(p['method'])}{_e(' ' + p['sweep'] if p['sweep'] else '')} "
                   f"p{path['position']}</th>" for p, path in columns)
    steps = sorted({s for p in panels for s in p["steps"]})
    rows = []
    for step in steps:
        cells = []
        for p, path in columns:
            i = p["steps"].index(step) if step in p["steps"] else None
            cells.append(_number(path["mean"][i], path["half"][i]) if i is not None else "—")
        rows.append(f"<tr><td>{step}</td>" + "".join(f"<td>{_e(c)}</td>" for c in cells)
                    + "</tr>")
    return ("<details><summary>The figure's values (mean over seeds ± 95% half-width)</summary>"
            f"<div class=\"wide\"><table id=\"glance-values\"><tr><th>step</th>{head}</tr>"
            + "".join(rows) + "</table></div></details>")


def _glance_row(v: RecencyVerdict, control: RecencyVerdict | None) -> str:
    """One method's row of the first screen's verdict table."""
    def scored(verdict: RecencyVerdict, label: str | None) -> str:
        e = next((e for e in verdict.ranking if e.path_label == label), None)
        if e is None:
            return "—"
        half = "" if e.ci95 is None else f" ± {e.ci95:.2f}"
        return f"p{e.position}: {e.mean:.2f}{half}"

    def said(verdict: RecencyVerdict | None) -> str:
        if verdict is None or verdict.observed is None:
            return "no verdict"
        text = "observed" if verdict.observed else "NOT observed"
        return text + (" (the forget-last path did not forget)"
                       if verdict.forget_last_forgot is False else "")

    last = v.forget_last_paths[-1] if v.forget_last_paths else None
    cls = {True: "yes", False: "no"}.get(v.observed, "")
    n = min((e.n for e in v.ranking), default=0)
    return (f"<tr class=\"{cls}\">{_method_cell(v.method, v.sweep)}<td class=\"text\">"
            f"{_e(said(v))}</td><td>{_e(scored(v, last))}</td>"
            f"<td>{_e(scored(v, v.compared_with))}</td>"
            + (f"<td class=\"text\">{_e(said(control))}</td>" if control is not None else "")
            + f"<td>{n}</td></tr>")


def _verdict_section(results: Results) -> str:
    parts = ["<h2>Recency verdicts in full</h2>",
             "<p class=\"note\">Per method, paths ranked by mean forget score (rank 1 = forgets "
             "least). The recency effect (the paper's finding) is observed when the path with "
             "the forget stage last forgets least.</p>"]
    parts += [_verdict_div(v) for v in results.verdicts if v.kind != "pairwise"]
    return "\n".join(parts)


SATURATION_HEADERS = {"target_before": "unlearn target log-prob", M.FORGET_TOKEN_PROB:
                      "forget token prob", M.FORGET_GRAD_NORM: "forget NLL grad norm",
                      M.FIRST_GRAD_NORM: "first-step grad norm"}


def _saturation_table(results: Results) -> str:
    """Per method and path, where unlearning starts (mean over seeds): the saturation
    diagnostics at step 0 (pathunlearn.eval.saturation)."""
    rows = results.table.rows
    keys = [k for k in SATURATION if any(r.mean(k) is not None for r in rows)]
    if not keys:
        return ""
    head = "".join(f"<th>{_e(SATURATION_HEADERS[k])}</th>" for k in keys)
    body = "".join(
        f"<tr>{_method_cell(r.method, r.sweep)}<td class=\"text path\">{_e(r.path_label)}</td>"
        f"<td>{r.position}</td>"
        + "".join(f"<td>{_e(_cell_value(r.mean(k)))}</td>" for k in keys) + "</tr>"
        for r in rows)
    return ("<h2>Where unlearning starts (saturation, step 0)</h2><p class=\"note\">Mean over "
            "seeds. Gradient ascent's push on a sequence vanishes as its probability nears 1, "
            "so a path that starts with its forget set near probability 1 (a high token "
            "probability, a small gradient norm) can forget slowly for that reason alone. The "
            "gradient norm is that of the mean NLL of the first forget examples at step 0 with "
            "respect to the trained parameters; the first-step norm is the method's own loss "
            "on its first batch.</p>"
            f"<div class=\"wide\"><table><tr><th class=\"text\">method</th><th class=\"text\">"
            f"path</th><th>p</th>{head}</tr>{body}</table></div>")


def _verdict_div(v: Verdict) -> str:
    cls = {True: "yes", False: "no"}.get(v.observed, "")
    return f"<div class=\"verdict {cls}\">{_e(v.text)}</div>"


def _table_section(results: Results) -> str:
    t = results.table
    cols = display_columns(t)
    head = "".join(f"<th class=\"{_align(k)}\">{_e(h)}</th>" for k, h in cols)
    body = []
    for row in t.rows:
        values = [(k, display_value(row, k)) for k, _ in cols]
        cells = "".join(f"<td class=\"{_align(k)}{' na' if v == NA else ''}\">{_interval(v)}</td>"
                        for k, v in values)
        body.append(f"<tr class=\"{'last' if row.forget_last else ''}\">{cells}</tr>")
    score_list = "".join(f"<li><code>{_e(sc.key)}</code> ({_e(sc.header)}): {_e(sc.definition)}"
                         "</li>" for sc in t.scores)
    note_list = "".join(f"<li>{_e(n)}</li>" for n in results.notes())
    return (f"<h2>Table (the paper's Table 1)</h2><div class=\"wide\"><table><tr>{head}</tr>"
            f"{''.join(body)}</table></div>"
            f"<ul class=\"note\">{note_list}</ul>"
            f"<details><summary>Score definitions</summary><ul>{score_list}</ul></details>"
            "<p class=\"note\">Also in results.json (every cell, verdict details), results.csv "
            "and results.md.</p>")


def _field_section(results: Results) -> str:
    """The TOFU view (:mod:`pathunlearn.report.field`): forget quality, model utility and
    privleak per method and path against each path's own retrain model, and the spread of
    forget quality across paths."""
    from pathunlearn.report.field import field_columns, spreads

    t = results.table
    cols = field_columns(t)
    if not cols:
        return ""
    items = "".join(f"<li>{_e(s.text)}</li>" for s in spreads(t))
    return ("<h2>Retrain equivalence in the field's metrics (TOFU view)</h2><p class=\"note\">"
            "Forget quality is TOFU's test of retrain equivalence: the p-value of a KS test "
            "between the forget set's per-item truth ratios after unlearning and those of a "
            "retrain model. Here every path is compared with its <b>own</b> retrain model (the "
            "path without the forget stage, trained in the same order), at the end of "
            "unlearning; model utility and privleak as TOFU and MUSE define them "
            "(docs/metrics.md). Per-item values: each cell's items.jsonl.</p>"
            + _view_table(t, cols) + (f"<ul>{items}</ul>" if items else ""))


def _muse_section(results: Results) -> str:
    """The MUSE view (:mod:`pathunlearn.report.field`): MUSE's criteria C1-C4 per method and
    path, and per method each criterion's range across paths."""
    from pathunlearn.report.field import MUSE_NOTE, criterion_ranges, muse_columns

    t = results.table
    cols = muse_columns(t)
    if not cols:
        return ""
    items = "".join(f"<li>{_e(x)}</li>" for x in criterion_ranges(t, cols))
    return (f"<h2>MUSE's criteria per path</h2><p class=\"note\">{_e(MUSE_NOTE)}</p>"
            + _view_table(t, cols) + (f"<ul>{items}</ul>" if items else ""))


def _view_table(t, cols: list[tuple[str, str]]) -> str:
    """A field view's table: per method and path its ``cols`` (key, header), then seeds."""
    head = "".join(f"<th class=\"{_align(k)}\">{_e(h)}</th>"
                   for k, h in [("method", "method"), ("position", "p"),
                                ("path_label", "path"), *cols, ("n", "seeds")])
    body = "".join(
        f"<tr class=\"{'last' if r.forget_last else ''}\">{_method_cell(r.method, r.sweep)}"
        f"<td>{_e(display_value(r, 'position'))}</td><td class=\"text path\">"
        f"{_e(r.path_label)}</td>"
        + "".join(f"<td>{_e(display_value(r, k))}</td>" for k, _ in cols)
        + f"<td>{_e(display_value(r, 'n'))}</td></tr>" for r in t.rows)
    return f"<div class=\"wide\"><table><tr>{head}</tr>{body}</table></div>"


def _interval(value: str) -> str:
    """A table value, its ``± half-width`` (if any) on a line of its own below the mean, so
    that a wide table of intervals fits the page."""
    mean, sep, half = value.partition(" ± ")
    return _e(mean) + (f"<span class=\"ci\">± {_e(half)}</span>" if sep else "")


def _pairwise_section(results: Results) -> str:
    """Pairwise d_MSE between paths: the growth verdicts, a compact table per method (first
    and last step, growth factor), the notes."""
    pairwise = results.pairwise
    if pairwise is None:
        return ""
    parts = ["<h2>Pairwise distance between paths</h2>",
             "<p class=\"note\">Per method, d_MSE between the unlearned models of every pair of "
             "paths at the first and the last eval step (all steps in results.json, section "
             "<code>pairwise</code>, and in the pairwise figures).</p>"]
    parts += [_verdict_div(v) for v in pairwise.verdicts]
    for method, sweep in pairwise.methods():
        summary = pair_summary(pairwise, method, sweep)
        heads = ["pair", *summary_headers(summary), "growth", "seeds"]
        head = "".join(f"<th class=\"{'text' if i == 0 else ''}\">{_e(h)}</th>"
                       for i, h in enumerate(heads))
        rows = "".join("<tr>" + "".join(f"<td class=\"{'text' if i == 0 else ''}\">{_e(c)}</td>"
                                        for i, c in enumerate(summary_cells(s, summary)))
                       + "</tr>" for s in summary)
        parts.append(f"<h3>{_e(method)}{_e(f' ({sweep})' if sweep else '')}</h3>"
                     f"<div class=\"wide\"><table><tr>{head}</tr>{rows}</table></div>")
    notes_list = "".join(f"<li>{_e(n)}</li>" for n in pairwise.notes())
    return "\n".join(parts) + f"<ul class=\"note\">{notes_list}</ul>"


def _matched_section(results: Results) -> str:
    """The matched-start control: where each matched model stopped, and per method the
    recency verdict without and with the control, side by side."""
    from pathunlearn.report.controls import model_lines

    control = results.matched
    if control is None:
        return ""
    parts = ["<h2>Recency verdict with the matched-start control</h2>",
             "<p class=\"note\">A path that learned the forget set last starts unlearning "
             "closer to probability 1, where gradient ascent pushes least. The control trains "
             "that path's last stage again (same parent, data, seed and schedule) and stops it "
             "at the first check where the control's metric reaches the other paths' starting "
             "level (minus the tolerance); every method and seed unlearns from that model too. "
             "If the forget-last path still forgets least, the recency effect is not explained "
             "by its starting likelihood.</p>",
             "<ul>" + "".join(f"<li>{_e(t)}</li>" for t in model_lines(control)) + "</ul>"]
    without = {(v.method, v.sweep): v for v in results.verdicts if v.kind == "recency"}
    rows = [f"<tr>{_method_cell(v.method, v.sweep)}"
            f"<td class=\"text\">{_e(_observed(without.get((v.method, v.sweep))))}</td>"
            f"<td class=\"text\">{_e(_observed(v))}</td></tr>" for v in control.verdicts]
    parts.append("<div class=\"wide\"><table><tr><th class=\"text\">method</th>"
                 "<th class=\"text\">recency without the control</th><th class=\"text\">"
                 f"with the control</th></tr>{''.join(rows)}</table></div>")
    parts += [_verdict_div(v) for v in control.verdicts]
    return "\n".join(parts)


def _observed(verdict: RecencyVerdict | None) -> str:
    """A recency verdict in a table cell: observed or not, and the forget-last path's rank."""
    if verdict is None or verdict.observed is None:
        return "—"
    ranks = ", ".join(str(r) for r in verdict.forget_last_ranks)
    return f"{'observed' if verdict.observed else 'NOT observed'} (rank {ranks})"


def _method_cell(method: str, sweep: str) -> str:
    """A table cell naming a method and, when the run sweeps, its sweep value."""
    return f"<td class=\"text\">{_e(method)}{_e(' ' + sweep if sweep else '')}</td>"


def embedded_figure(png: Path, caption: str, full: bool = False) -> str:
    """``png`` embedded in the page (base64), with ``caption`` (HTML, already escaped) after
    its bold name; ``full``: a row of the figure grid to itself."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    cls = " class=\"full\"" if full else ""
    return (f"<figure{cls}><img alt=\"{_e(png.stem)}\" "
            f"src=\"data:image/png;base64,{data}\">"
            f"<figcaption><b>{_e(png.stem)}</b>: {caption}</figcaption></figure>")


def _relearn_section(results: Results) -> str:
    """Per method, path and relearning data: the forget metric before unlearning, after it and
    after relearning, the fraction recovered; and the relearning figures."""
    from pathunlearn.report.relearn import figure_stem

    entries = results.relearn
    if not entries:
        return ""
    r = results.config.relearn
    heads = ["method", "path", "p", "relearned on", "before unlearning", "unlearned",
             f"after {r.steps} steps", "recovered", "seeds"]
    head = "".join(f"<th class=\"{'text' if i < 2 or i == 3 else ''}\">{_e(h)}</th>"
                   for i, h in enumerate(heads))
    rows = "".join(
        f"<tr>{_method_cell(e['method'], e['sweep'])}<td class=\"text path\">{_e(e['path_label'])}</td>"
        f"<td>{e['position']}</td>"
        f"<td class=\"text\">{_e(e['data'])}</td>"
        + "".join(f"<td>{_e(_cell_value(e[k]))}</td>" for k in ("before", "unlearned",
                                                                "relearned", "recovered"))
        + f"<td>{e['seeds']}</td></tr>" for e in entries)
    parts = ["<h2>Relearning after unlearning</h2>",
             f"<p class=\"note\">After unlearning, {r.steps} finetuning steps (lr "
             f"{_e(format(r.lr or results.config.training.lr, 'g'))}, batch {r.batch_size}) "
             f"on the path's retain data and, separately, on {r.forget_examples} forget "
             f"examples, from the unlearned model each time; the forget score's metric "
             f"({_e(entries[0]['metric'])}, mean over seeds) before unlearning, after it and "
             "after relearning. recovered = (after relearning - unlearned) / (before - "
             "unlearned): the share of what unlearning removed that came back (shallow "
             "forgetting comes back fast).</p>",
             f"<div class=\"wide\"><table><tr>{head}</tr>{rows}</table></div>"]
    for method, sweep in dict.fromkeys((e["method"], e["sweep"]) for e in entries):
        png = results.run_dir / FIGURES / f"{figure_stem(method, sweep)}.png"
        if png.is_file():
            parts.append(embedded_figure(png, "the forget metric over relearning steps per "
                                              "path (dotted: before unlearning)"))
    return "\n".join(parts)


def _align(key: str) -> str:
    return "text path" if key == "path_label" else "text" if key in ("method", "sweep") else ""


def _figure_section(run_dir: Path, figures: list[dict], drawn: bool = True) -> str:
    """Every figure of the index, at its own size (two a row on a wide page; the pairwise
    ones, two panels wide, a row each)."""
    parts = ["<h2>Figures</h2>"]
    if not drawn:
        return parts[0] + ("<p class=\"note\">The figures were not drawn (--no-figures); "
                           f"<code>pathunlearn report {_e(run_dir)}</code> draws them.</p>")
    for entry in figures:
        png = next((f for f in entry.get("files", []) if f.endswith(".png")), None)
        path = run_dir / FIGURES / png if png else None
        if path is None or not path.is_file():
            continue
        svg = next((f for f in entry["files"] if f.endswith(".svg")), None)
        parts.append(embedded_figure(path, _e(entry.get("caption", ""))
                                     + (f" (vector: figures/{_e(svg)})" if svg else ""),
                                     full=entry.get("kind") == "pairwise"))
    if len(parts) == 1:
        return parts[0] + "<p class=\"note\">No figures were written for this run.</p>"
    return parts[0] + "<div class=\"figures\">" + "\n".join(parts[1:]) + "</div>"


def _cells_section(results: Results) -> str:
    t = results.table
    keys = ["method", "sweep", "path_label", "seed", "status", "steps_done",
            *(sc.key for sc in t.scores)]
    keys = [k for k in keys if k != "sweep" or t.swept]
    keys = [k for k in keys if k not in NOT_MEASURED or t.measured.get(k)]
    head = "".join(f"<th class=\"{_align(k)}\">{_e(k)}</th>" for k in keys)
    rows = []
    for c in t.cells:
        rows.append("<tr>" + "".join(
            f"<td class=\"{_align(k)}\">{_e(_cell_value(c.flat(k)))}</td>" for k in keys) + "</tr>")
    return (f"<h2>Cells</h2><details><summary>{len(t.cells)} cells, one row each (scores "
            f"before averaging over seeds)</summary><div class=\"wide\"><table><tr>{head}</tr>"
            f"{''.join(rows)}</table></div></details>")


def _cell_value(v) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _probe_section(probes: list, notes: tuple[str, ...] = ()) -> str:
    """Every probe set the run tracked (RUN_DIR/probes.json): kind, stage, source, size; the
    default sets left out (``notes``: the plan's, their sources lack the fields they need);
    then the first prompt of each with its targets: what the log-probabilities are of."""
    head = "".join(f"<th class=\"text\">{h}</th>" for h in ("probe", "kind", "stage", "source"))
    summary = "".join(
        f"<tr><td class=\"text\">{_e(p.name)}</td><td class=\"text\">{_e(p.kind)}</td>"
        f"<td class=\"text\">{_e(p.stage or '')}</td><td class=\"text\">{_e(p.source)}</td>"
        f"<td>{len(p.rows) // p.group_size}</td><td>{p.group_size}</td></tr>" for p in probes)
    parts = ["<h2>Probes</h2>",
             "<p class=\"note\">The probe sets this run tracked (RUN_DIR/probes.json holds every "
             "row). Label probes score the unlearn target (first) and its paraphrases after "
             "every prompt; heldout sets are the items the RE distances are taken on.</p>",
             f"<div class=\"wide\"><table><tr>{head}<th>prompts</th><th>targets each</th></tr>"
             f"{summary}</table></div>"]
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        parts.append(f"<p class=\"note\">Default probe sets left out (their data lack the "
                     f"fields they need; RUN_DIR/plan.json lists them):</p><ul>{items}</ul>")
    seen: dict[tuple[str, ...], str] = {}
    for probe in probes:
        prompt = probe.rows[0][0]
        targets = tuple(target for _, target in probe.rows[: probe.group_size])
        messages = "".join(f"<li><b>{_e(m.get('role', ''))}</b>: {_e(m.get('content', ''))}</li>"
                           for m in prompt)
        if len(targets) > 1 and targets in seen:
            listing = f"<p>The same {len(targets)} targets as {_e(seen[targets])}.</p>"
        else:
            seen.setdefault(targets, probe.name)
            items = "".join(f"<li>{_e(t)}</li>" for t in targets)
            listing = f"<p>{len(targets)} target(s):</p><ol>{items}</ol>"
        parts.append(f"<h3>{_e(probe.name)}</h3><p>First prompt:</p><ul>{messages}</ul>{listing}")
    return "\n".join(parts)


def _environment_section(results: Results, phases: dict | None, extra: dict) -> str:
    versions = {"python": platform.python_version()} | {p: _version(p) for p in PACKAGES}
    facts = {**versions, "device": extra.get("device") or _device_here()}
    facts |= {k: v for k, v in extra.items() if k != "device"}
    rows = "".join(f"<tr><th class=\"text\">{_e(k)}</th><td class=\"text\">{_e(v)}</td></tr>"
                   for k, v in facts.items())
    parts = [f"<h2>Environment</h2><table>{rows}</table>"]
    phases = {k: v for k, v in (phases or {}).items() if isinstance(v, int | float)}
    if phases:  # (phases.json's "cells": the cells' phases, shown below from the cells)
        total = sum(phases.values())
        prow = "".join(f"<tr><td class=\"text\">{_e(k)}</td><td>{float(v):.1f}</td></tr>"
                       for k, v in phases.items())
        parts.append(f"<h3>Wall time per phase (s)</h3><table><tr><th class=\"text\">phase</th>"
                     f"<th>seconds</th></tr>{prow}<tr><th class=\"text\">total</th>"
                     f"<th>{total:.1f}</th></tr></table>")
    else:
        parts.append("<p class=\"note\">Wall times per phase were not recorded (no "
                     "phases.json); unlearning time per method, from the cells, below.</p>")
    inside = sum_phases([c.summary for c in results.cells])
    if inside:
        crow = "".join(f"<tr><td class=\"text\">{_e(k)}</td><td>{v:.1f}</td></tr>"
                       for k, v in inside.items())
        parts.append(f"<h3>Time inside the cells per phase (s, all cells)</h3><table><tr>"
                     f"<th class=\"text\">phase</th><th>seconds</th></tr>{crow}</table>")
    per_method: dict[str, float] = {}
    for c in results.cells:
        per_method[c.method] = per_method.get(c.method, 0.0) + float(
            c.summary.get("seconds") or 0.0)
    mrow = "".join(f"<tr><td class=\"text\">{_e(k)}</td><td>{v:.1f}</td></tr>"
                   for k, v in per_method.items())
    parts.append("<h3>Unlearning time per method (s, summed over cells)</h3><table><tr>"
                 f"<th class=\"text\">method</th><th>seconds</th></tr>{mrow}</table>")
    return "\n".join(parts)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device_here() -> str:
    """Where the report was generated, when the run did not record its device."""
    where = f"{platform.machine()} {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            where += f", CUDA: {torch.cuda.get_device_name(0)}"
        else:
            where += ", no CUDA device"
    except ImportError:
        pass
    return f"not recorded by the run; report generated on {where}"


def _config_section(results: Results) -> str:
    return (f"<h2>Resolved config</h2><p class=\"note\">{_e(CONFIG)}, validated</p>"
            f"<pre>{_e(dump_config(results.config))}</pre>")
