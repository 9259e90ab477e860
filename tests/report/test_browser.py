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
  text: document.body.innerText,
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
    assert sorted({image["src"] for image in facts["images"]}) == srcs  # (the first screen's
    assert all(image["complete"] and image["width"] > 0 for image in facts["images"])  # twice)
    # the first screen's verdict table, the saturation table, the results table, the pairwise
    # table (one method), the cells, the probes, the environment and the unlearning time per
    # method
    assert facts["tables"] == 8
    assert {"forget score", "d at step 0", "steps_done", "targets each"} <= set(facts["headers"])
    assert {"Figures", "Cells", "Probes"} <= set(facts["sections"])
    # the dataset's HTML is text on the page, and nothing of it ran or became an element
    assert f"Question 0: {SCRIPT} & {IMG}" in facts["text"]
    assert f"Answer 0: {IMG} {SCRIPT}" in facts["text"]
    assert facts["xss"] == "undefined"
    assert facts["scripts"] == 0 and facts["handlers"] == 0


FIRST_SCREEN = """(() => {
  const box = id => { const r = document.getElementById(id).getBoundingClientRect();
                      return {top: r.top, bottom: r.bottom, right: r.right}; };
  const main = [...document.querySelectorAll('h2')].find(h => h.textContent.startsWith('Table'));
  const wide = main.nextElementSibling;
  return {table: box('glance-table'), figure: box('glance-figure'),
          answer: document.querySelector('.answer').textContent,
          pageScroll: document.documentElement.scrollWidth > window.innerWidth,
          mainScroll: wide.scrollWidth > wide.clientWidth,
          toc: document.querySelectorAll('.toc a').length};
})()"""


def test_the_first_screen_holds_the_answer_the_verdicts_and_the_main_figure(chromium, make_run,
                                                                           tmp_path):
    """Issue 28: at 1400 x 900 the first viewport holds the one-sentence answer, the verdict
    table and the forget metric over unlearning per path; the main table needs no horizontal
    scroll; a screenshot of the first screen is kept beside the test's files."""
    run_dir = make_run(seeds=(0, 1))
    _, _, report = make_report(load_run(run_dir))
    with Browser(chromium, tmp_path / "browser", timeout=60) as browser:
        page = browser.open(report.resolve().as_uri())
        page.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        facts = page.evaluate(FIRST_SCREEN)
        shot = page.send("Page.captureScreenshot", {"format": "png"})["data"]
        errors = page.errors
    (tmp_path / "first-screen.png").write_bytes(base64.b64decode(shot))
    assert not errors, "\n".join(errors)
    assert facts["answer"].startswith("Recency effect observed for 1 of 2 methods")
    assert facts["table"]["bottom"] <= 900 and facts["figure"]["bottom"] <= 900
    assert facts["table"]["top"] >= 0 and facts["figure"]["right"] <= 1400
    assert not facts["pageScroll"] and not facts["mainScroll"]
    assert facts["toc"] >= 5
    assert (tmp_path / "first-screen.png").stat().st_size > 10_000
