"""``prune --report``: the HTML page opened in a real headless Chromium (driven by selenium) loads from file://
with no console error, every picture has rendered, and the table shows the pruned model's numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import randomize_bn
from yoloslim.cli import main
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.profile import count_params, profile, total_gflops

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# without these, Chromium hangs here on network lookups (and a used profile can hold it up)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,900")


def browser(profile_dir: Path):
    """A headless Chromium under selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile_dir}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model("yolov5n", nc=2))
    path = tmp_path / "base.safetensors"
    save_model(path, model, ModelInfo(model.spec, ["a", "b"], 64).with_event("trained", epochs=1))
    return path


@pytest.mark.slow
def test_report_page_renders_in_chromium_with_the_pruned_models_numbers(tmp_path, weights):
    out, js, page = tmp_path / "p.safetensors", tmp_path / "p.json", tmp_path / "report" / "r.html"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.5", "--imgsz", "64",
                 "--latency-runs", "2", "--out", str(out), "--json", str(js), "--report", str(page)]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    summary = json.loads(js.read_text())
    pruned, _ = load_model(out)
    driver = browser(tmp_path / "chromium-profile")
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        plots = driver.execute_script(
            "return Array.from(document.querySelectorAll('img.plot')).map("
            "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        cells = driver.execute_script(
            "const d = {}; document.querySelectorAll('[data-key]').forEach(e => d[e.dataset.key] = e.textContent);"
            "return d")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    assert errors == []
    titles = [p[0] for p in plots]
    assert titles == ["channels per layer", "γ histogram before", "γ histogram after", "per-layer latency"]
    assert all(complete and w >= 300 and h >= 150 for _, complete, w, h in plots), plots
    assert cells["params-after"] == f"{count_params(pruned):,}"
    assert cells["params-before"] == f"{summary['before']['params']:,}"
    assert cells["gflops-after"] == f"{round(total_gflops(profile(pruned, 64)), 4):.4g}"
    assert cells["latency_ms-after"] == f"{summary['after']['latency_ms']:.2f}"
    speedup = summary["before"]["latency_ms"] / summary["after"]["latency_ms"]
    assert cells["speedup"] == f"{speedup:.2f}×"
