"""The study report in a real browser: headless Chromium via Selenium.

Debian's ``chromium`` and ``chromium-driver`` are installed by :func:`_browser` when missing
(``apt-get``; needs root or passwordless sudo, as on CI). Set ``TRANSFUSE_SKIP_BROWSER=1`` to
skip on a machine where that is impossible.
"""

import os
import shutil
import subprocess

import pytest

from transfuse.report.study import build_report

from .test_report import EVIL, study_ws  # noqa: F401  (fixture)


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
