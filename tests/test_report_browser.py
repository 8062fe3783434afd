"""The study report in a real browser: headless Chromium via Selenium.

Debian's ``chromium`` and ``chromium-driver`` are installed by :func:`_browser` when missing
(``apt-get``; needs root or passwordless sudo, as on CI). Set ``TRANSFUSE_SKIP_BROWSER=1`` to
skip on a machine where that is impossible.
"""

import os
import shutil
import subprocess

import pytest

from transfuse.report.card import CARD_ALT
from transfuse.report.study import build_report
from transfuse.store import Store

from .test_report import EVIL, study_ws  # noqa: F401  (fixture)
from .test_report_figures import STAGES, store_analysis


def _install_chromium() -> None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = sudo + ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(sudo + ["apt-get", "update", "-q"], capture_output=True, env=env)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"could not install chromium: {r.stderr[-500:]}"


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("TRANSFUSE_SKIP_BROWSER"):
        pytest.skip("TRANSFUSE_SKIP_BROWSER is set")
    _install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield drv
    drv.quit()


# Draw each image onto a canvas and measure its pixel spread: a blank figure has none.
IMAGE_CHECK = """
return Array.from(document.images).map(img => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let s = 0, s2 = 0, n = d.length / 4;
  for (let i = 0; i < d.length; i += 4) { const v = (d[i] + d[i+1] + d[i+2]) / 3; s += v; s2 += v * v; }
  const mean = s / n;
  return {complete: img.complete, w: img.naturalWidth, h: img.naturalHeight,
          std: Math.sqrt(Math.max(s2 / n - mean * mean, 0))};
});
"""


def test_report_in_headless_chromium(browser, study_ws):  # noqa: F811
    out = build_report(workspace=study_ws, study="syn", out=study_ws / "report.html")
    browser.get(out.resolve().as_uri())
    assert browser.title == "transfuse study report: syn"
    images = browser.execute_script(IMAGE_CHECK)
    assert len(images) >= 3
    for im in images:
        assert im["complete"] and im["w"] > 50 and im["h"] > 50, im
        assert im["std"] > 5, f"blank figure: {im}"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    # the hostile dataset name is text on the page, not a script that ran
    assert EVIL in browser.find_element("tag name", "body").text
    assert browser.execute_script("return document.scripts.length") == 0


WINDOW = 1400  # px: the report must not scroll sideways in a window this wide

LAYOUT = """
const de = document.documentElement;
const firstFigure = document.querySelector('img, svg');
return {scroll: de.scrollWidth, client: de.clientWidth, bodyScroll: document.body.scrollWidth,
        first: firstFigure ? {tag: firstFigure.tagName, alt: firstFigure.getAttribute('alt') || '',
                              section: firstFigure.closest('section') ? firstFigure.closest('section').id : ''} : null,
        legends: Array.from(document.querySelectorAll('figure')).map(f => f.dataset.legend || ''),
        tables: Array.from(document.querySelectorAll('#analysis div.wide')).map(d =>
            ({scroll: d.scrollWidth, client: d.clientWidth, head: d.querySelector('thead').innerText}))};
"""


def test_report_fits_a_1400px_window_and_every_figure_has_a_legend(browser, study_ws):  # noqa: F811
    store_analysis(Store(study_ws), "syn")  # ten stages: the widest same-stage table we draw
    out = build_report(workspace=study_ws, study="syn", out=study_ws / "report.html")
    browser.set_window_size(WINDOW, 1000)
    browser.get(out.resolve().as_uri())
    page = browser.execute_script(LAYOUT)
    assert page["client"] <= WINDOW
    assert page["scroll"] <= WINDOW and page["scroll"] <= page["client"], page
    assert page["bodyScroll"] <= WINDOW, page
    # the decision card's forest plot is the page's first figure (first <img>/<svg> in document order)
    assert page["first"] == {"tag": "IMG", "alt": page["first"]["alt"], "section": "card"}, page["first"]
    assert page["first"]["alt"].startswith(CARD_ALT), page["first"]
    # every figure names its legend / colorbar / key labels (figure_img refuses figures without)
    assert len(page["legends"]) >= 8 and all(lg.strip() for lg in page["legends"]), page["legends"]
    # the analysis tables fit their box (no scrolling inside it either) and head with stage names
    assert len(page["tables"]) == 3
    for t in page["tables"]:
        assert t["scroll"] <= t["client"] + 1, t
        assert all(s in t["head"] for s in STAGES) and "stage 0" not in t["head"]
    # a forest plot per model: the ±margin band and the verdicts are in its legend
    forest = browser.execute_script(
        "return Array.from(document.querySelectorAll('#forest figure')).map(f => "
        "[f.querySelector('img').alt, f.dataset.legend])")
    plots = [lg for alt, lg in forest if alt.startswith("Forest plot")]
    assert plots and all("±margin" in lg and "better" in lg for lg in plots), forest
    # the verdict table fits too (no sideways scrolling inside its box)
    box = browser.execute_script("const d = document.querySelector('#verdicts div.wide'); "
                                 "return [d.scrollWidth, d.clientWidth];")
    assert box[0] <= box[1] + 1, box


def test_decision_card_first_and_long_reasons_fit_1400px(browser, tmp_path):
    """A study whose reasons are long (a gate on every question) and arm names long: the card's
    forest plot is still the first figure, the verdict table shows short reasons that open on a
    click, and neither the page nor the table scrolls sideways at 1,400 px."""
    from .test_study_decisions import add, study_info

    store = Store(tmp_path)
    long_arm = "pretrained[imagenet:efficientnet_lite0]·linear_probe·layer_decay=0.7·augment=basic"
    for seed in range(3):
        add(store, init="random", seed=seed, test=0.8 + 0.01 * seed)
        add(store, init="meanvar", seed=seed, test=0.81 - 0.012 * seed)
        add(store, init=long_arm, seed=seed, test=0.505 + 0.001 * seed)  # did not learn: a long reason
    study_info(store)
    out = build_report(workspace=tmp_path, study="syn", out=tmp_path / "report.html")
    browser.set_window_size(WINDOW, 1000)
    browser.get(out.resolve().as_uri())
    page = browser.execute_script(LAYOUT)
    assert page["scroll"] <= WINDOW and page["bodyScroll"] <= WINDOW, page
    assert page["first"]["section"] == "card" and page["first"]["alt"].startswith(CARD_ALT), page["first"]
    box = browser.execute_script("const d = document.querySelector('#verdicts div.wide'); "
                                 "return [d.scrollWidth, d.clientWidth];")
    assert box[0] <= box[1] + 1, box
    details = browser.execute_script(
        "return Array.from(document.querySelectorAll('#verdicts details')).map(d => "
        "[d.querySelector('summary').innerText, d.open, d.innerText]);")
    assert details and all(not is_open and s.endswith("…") and len(s) <= 60 for s, is_open, _ in details)
    # a click opens the full reason
    full = browser.execute_script(
        "const d = Array.from(document.querySelectorAll('#verdicts details'))"
        ".find(d => d.textContent.includes('did not learn'));"
        "d.querySelector('summary').click(); return [d.open, d.innerText];")
    assert full[0] and "within 0.02 of chance" in full[1], full
