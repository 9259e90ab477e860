"""report.html in a real browser (headless Chromium, driven by tests/browser.py): it renders
without a console error or an uncaught exception, every figure loads, the tables are there, and
a dataset string made of HTML shows as text and runs nothing."""

from __future__ import annotations

import base64
import json

import pytest

from browser import Browser, find_chromium
from pathunlearn.report import make_report
from pathunlearn.rundir import load_run

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'

# everything the checks need, in one evaluation
FACTS = """(() => ({
  href: location.href,
  xss: typeof window.__xss,
  images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                          width: i.naturalWidth})),
  scripts: document.scripts.length,
  handlers: document.querySelectorAll('[onerror], [onload]').length,
  tables: document.querySelectorAll('table').length,
  headers: [...document.querySelectorAll('th')].map(th => th.textContent),
  sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  text: document.body.textContent,  // (innerText leaves out the closed sections)
}))()"""


@pytest.fixture
def chromium() -> str:
    """The Chromium executable, or skip."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium (chromium, chromium-browser or google-chrome) on PATH: "
                    "apt-get install chromium")
    return exe


def test_report_renders_in_chromium(chromium, make_run, tmp_path):
    # the instructions stage reads a chat file whose strings are HTML: its first conversation
    # is the instructions_train probe's first prompt and target, shown in the probe section
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question {i}: {SCRIPT} & {IMG}"},
        {"role": "assistant", "content": f"Answer {i}: {IMG} {SCRIPT}"}]}) + "\n"
        for i in range(8)))
    run_dir = make_run(seeds=(0,), methods=("ga",), re=True,
                       config={"stages": {"instructions": {"source": str(chat)}}})
    _, files, report = make_report(load_run(run_dir))
    pngs = [f for f in files if f.suffix == ".png"]
    assert pngs, "the run has no figures to check"

    with Browser(chromium, tmp_path / "browser", timeout=60) as browser:
        page = browser.open(report.resolve().as_uri())
        facts = page.evaluate(FACTS)
        errors = page.errors

    assert not errors, "\n".join(errors)
    assert facts["href"] == report.resolve().as_uri()
    # every figure embedded whole (a truncated PNG would still load: Chromium decodes what it
    # gets) and loaded
    srcs = sorted(f"data:image/png;base64,{base64.b64encode(f.read_bytes()).decode()}"
                  for f in pngs)
    assert sorted(image["src"] for image in facts["images"]) == srcs  # each once
    assert all(image["complete"] and image["width"] > 0 for image in facts["images"])
    # the first screen's verdict table and its figure's values, the saturation table, the
    # results table, the pairwise table (one method), the cells, the probes, the environment
    # and the unlearning time per method
    assert facts["tables"] == 9
    assert {"forget score", "d at step 0", "steps_done", "targets each"} <= set(facts["headers"])
    assert {"Figures", "Cells", "Probes"} <= set(facts["sections"])
    # the dataset's HTML is text on the page, and nothing of it ran or became an element
    assert f"Question 0: {SCRIPT} & {IMG}" in facts["text"]
    assert f"Answer 0: {IMG} {SCRIPT}" in facts["text"]
    assert facts["xss"] == "undefined"
    assert facts["scripts"] == 0 and facts["handlers"] == 0


FIRST_SCREEN = """(() => {
  const box = el => { const r = el.getBoundingClientRect();
                      return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
  const wide = document.querySelector('#table .wide');
  const sections = [...document.querySelectorAll('details.section')];
  return {table: box(document.getElementById('glance-table')),
          panels: [...document.querySelectorAll('#glance-figure svg.plot')].map(box),
          legend: box(document.querySelector('#glance-figure .legend')),
          answer: document.querySelector('.answer').textContent,
          pageScroll: document.documentElement.scrollWidth > window.innerWidth,
          mainScroll: wide.scrollWidth > wide.clientWidth,
          sections: sections.map(d => ({title: d.querySelector('summary').textContent,
                                        open: d.open, content: d.lastElementChild.id})),
          toc: [...document.querySelectorAll('.toc a')].map(a => a.getAttribute('href')),
          values: JSON.parse(document.getElementById('glance-figure').dataset.values)};
})()"""

# the last step of the first panel: where it is, and what its hover box shows before and after
HOVER_TARGET = """(() => {
  const g = [...document.querySelectorAll('#glance-figure svg.plot')[0].querySelectorAll('.hv')]
    .pop();
  const r = g.querySelector('.band').getBoundingClientRect();
  return {x: r.left + r.width / 2, y: r.top + r.height / 2, step: Number(g.dataset.step)};
})()"""
TIP = """(() => {
  const g = [...document.querySelectorAll('#glance-figure svg.plot')[0].querySelectorAll('.hv')]
    .pop();
  const tip = g.querySelector('.tip');
  return {visible: getComputedStyle(tip).visibility,
          lines: [...tip.querySelectorAll('text')].map(t => t.textContent)};
})()"""
FOLLOW = """(() => {
  document.querySelector('.toc a[href="#cells"]').click();
  return document.getElementById('section-cells').open;
})()"""


def test_the_first_screen_holds_the_answer_the_verdicts_and_the_main_figure(chromium, make_run,
                                                                           tmp_path):
    """Issue 28: at 1400 x 900 the first viewport holds the one-sentence answer, the verdict
    table and the forget metric over unlearning per path (a panel per method); the main table
    needs no horizontal scroll; pointing at a step shows each path's mean there (the numbers of
    the cells' metrics); the sections are <details> (the table and figures open, the diagnostics
    closed) that the contents link into, a closed one opening when followed; a screenshot of
    the first screen is kept beside the test's files."""
    run_dir = make_run(seeds=(0, 1))
    _, _, report = make_report(load_run(run_dir))
    with Browser(chromium, tmp_path / "browser", timeout=60) as browser:
        page = browser.open(report.resolve().as_uri())
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        facts = page.evaluate(FIRST_SCREEN)
        shot = page.send("Page.captureScreenshot", {"format": "png"})["data"]
        target = page.evaluate(HOVER_TARGET)
        before = page.evaluate(TIP)
        page.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": target["x"],
                                               "y": target["y"]})
        after = page.evaluate(TIP)
        opened = page.evaluate(FOLLOW)
        errors = page.errors
    (tmp_path / "first-screen.png").write_bytes(base64.b64decode(shot))
    assert not errors, "\n".join(errors)
    assert facts["answer"].startswith("Recency effect observed for 1 of 2 methods")
    assert facts["table"]["top"] >= 0 and facts["table"]["bottom"] <= 900
    assert len(facts["panels"]) == 2 and facts["legend"]["top"] >= facts["table"]["bottom"]
    assert all(p["bottom"] <= 900 and p["right"] <= 1400 for p in facts["panels"])
    assert not facts["pageScroll"] and not facts["mainScroll"]
    assert (tmp_path / "first-screen.png").stat().st_size > 10_000

    by_title = {s["title"]: s for s in facts["sections"]}
    assert by_title["Table (the paper's Table 1)"]["open"] and by_title["Figures"]["open"]
    assert not any(by_title[t]["open"] for t in ("Cells", "Probes", "Environment",
                                                 "Resolved config"))
    assert facts["toc"] == [f"#{s['content']}" for s in facts["sections"]]
    assert opened

    # the hover box: hidden, then the step and each path's mean over seeds (from the cells)
    assert before["visible"] == "hidden" and after["visible"] == "visible"
    metric = "forget_label_id/all_mean"
    cells = [c for c in load_run(run_dir).cells if c.method == "ga"]
    panel = facts["values"][0]
    assert panel["method"] == "ga" and target["step"] == panel["steps"][-1]
    want = [f"step {target['step']}"]
    for path in panel["paths"]:
        seeds = [dict(zip(*c.series(metric), strict=True))[target["step"]] for c in cells
                 if "-".join(c.path) == path["label"]]
        assert len(seeds) == 2 and path["mean"][-1] == pytest.approx(sum(seeds) / 2)
        want.append(f"p{path['position']}: {sum(seeds) / 2:.3f} ± {path['half'][-1]:.3f}")
    assert after["lines"] == want
