"""report.html read as HTML, without a browser (issue 28): the first screen's figure (inline
SVG, its numbers as JSON in an attribute and in a table), the collapsible sections and the
contents linking into them; hostile strings in the figure's data stay text; nothing needs a
script."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

import pathunlearn.report.plots
from pathunlearn.report.html import write_report
from pathunlearn.report.plots import write_figures
from pathunlearn.report.results import build_results
from pathunlearn.rundir import load_run

HOSTILE = "</script><img src=x onerror=alert(1)>"
METRIC = "forget_label_id/all_mean"


class Page(HTMLParser):
    """Every start tag (name, attributes), and the text inside each element with an id."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, list[str]] = {}
        self.open: list[str | None] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in ("img", "br", "meta", "line", "rect", "circle", "polyline", "polygon",
                       "path"):
            self.open.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if self.open and tag not in ("img", "br", "meta"):
            self.open.pop()

    def handle_data(self, data):
        for element in self.open:
            if element:
                self.text.setdefault(element, []).append(data)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v
                                                            for k, v in attrs.items())]


@pytest.fixture
def hostile(monkeypatch):
    """The first screen's data with a method and a path named HOSTILE (names a config cannot
    have: this is what the page does with any string in that data)."""
    real = pathunlearn.report.plots.main_series

    def main_series(results):
        panels = real(results)
        panels[0]["method"] = HOSTILE
        panels[0]["paths"][0]["label"] = HOSTILE
        return panels

    monkeypatch.setattr(pathunlearn.report.plots, "main_series", main_series)


def report(run_dir, figures: bool = False) -> str:
    """RUN_DIR's report.html (with the PNG figures: seconds more)."""
    results = build_results(load_run(run_dir), write=False)
    if figures:
        write_figures(results)
    return write_report(results).read_text()


def test_hostile_names_in_the_figure_data_stay_text(make_run, hostile):
    text = report(make_run(seeds=(0, 1), methods=("ga",)), figures=True)
    page = Page(text)
    assert not page.find("script")
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    images = page.find("img")
    assert images and all(a["src"].startswith("data:image/png;base64,") for a in images)
    (figure,) = page.find("figure", id="glance-figure")
    data = json.loads(figure["data-values"])
    assert data[0]["method"] == HOSTILE and data[0]["paths"][0]["label"] == HOSTILE
    # in the file: the attribute escaped, and no "</" in the JSON even once unescaped
    raw = re.search(r'data-values="([^"]*)"', text).group(1)
    assert "<" not in raw and "</" not in raw.replace("&lt;", "<")
    # shown as text: the panel's title, the legend, the values table's header
    assert HOSTILE in "".join(page.text["glance-figure"])
    assert HOSTILE not in text  # never raw


def test_figure_numbers_without_scripts(make_run):
    """The hover boxes, their tooltips and the values table say the same numbers as the
    cells: the mean over seeds at every step."""
    run_dir = make_run(seeds=(0, 1))
    text = report(run_dir)
    page = Page(text)
    (figure,) = page.find("figure", id="glance-figure")
    panels = json.loads(figure["data-values"])
    assert [p["method"] for p in panels] == ["ga", "npo"]
    cells = load_run(run_dir).cells
    for panel in panels:
        for path in panel["paths"]:
            mine = [dict(zip(*c.series(METRIC), strict=True)) for c in cells
                    if c.method == panel["method"] and "-".join(c.path) == path["label"]]
            assert len(mine) == 2
            assert path["mean"] == pytest.approx([(a[s] + b[s]) / 2 for a, b in [mine]
                                                  for s in panel["steps"]])
    # a hover target per step and panel, each with a tooltip naming the step and every path
    groups = page.find("g", **{"class": "hv"})
    assert len(groups) == sum(len(p["steps"]) for p in panels)
    first = panels[0]
    last = first["steps"][-1]
    tip = f"step {last}; " + "; ".join(
        f"p{p['position']}: {p['mean'][-1]:.3f} ± {p['half'][-1]:.3f}" for p in first["paths"])
    assert f"<title>{tip}</title>" in text
    # the values table: a row per step, a column per method and path
    values = "".join(page.text["glance-values"])
    for panel in panels:
        for path in panel["paths"]:
            assert f"{path['mean'][-1]:.3f} ± {path['half'][-1]:.3f}" in values


def test_sections_are_details_the_contents_link_into(make_run):
    text = report(make_run(seeds=(0, 1), methods=("ga",)))
    page = Page(text)
    sections = page.find("details", **{"class": "section"})
    anchors = [a["id"].removeprefix("section-") for a in sections]
    assert anchors[:2] == ["table", "figures"]
    opened = {a["id"].removeprefix("section-") for a in sections if "open" in a}
    assert {"table", "figures"} <= opened
    assert not opened & {"verdicts", "saturation", "cells", "probes", "environment", "config"}
    nav = re.search(r'<nav class="toc">.*?</nav>', text, re.DOTALL).group(0)
    assert re.findall(r'href="#([^"]+)"', nav) == anchors
    ids = {a.get("id") for _, a in page.tags}
    assert set(anchors) <= ids  # each link's target: the section's content, inside <details>
    for anchor in anchors:
        assert re.search(rf'<details class="section" id="section-{anchor}"( open)?><summary>'
                         rf'<h2>[^<]+</h2></summary><div id="{anchor}">', text)
    # the first screen comes before the contents: answer, verdict table, figure
    assert text.index('class="answer"') < text.index('id="glance-table"') \
        < text.index('id="glance-figure"') < text.index('<nav class="toc">')
