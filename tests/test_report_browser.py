"""``prune --report``: the HTML page opened in a real headless Chromium (driven by selenium) loads from file://
with no console error, every picture has rendered, and the table shows the pruned model's numbers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import randomize_bn
from yoloslim.cli import main
from yoloslim.data.dataset import load_data
from yoloslim.models import create_model
from yoloslim.models.io import ModelInfo, load_model, save_model
from yoloslim.models.profile import count_params, profile, total_gflops
from yoloslim.prune.graph import ChannelGraph
from yoloslim.prune.sensitivity import GroupCurve, SensitivityCurves

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
def weights(tmp_path, tiny_data):
    torch.manual_seed(0)
    names = load_data(tiny_data, warn=False).names
    model = randomize_bn(create_model("yolov5n", nc=len(names)))
    path = tmp_path / "base.safetensors"
    save_model(path, model, ModelInfo(model.spec, names, 96).with_event("trained", epochs=1))
    return path


@pytest.mark.slow
def test_report_page_renders_in_chromium_with_the_pruned_models_numbers(tmp_path, weights, tiny_data):
    out, js, page = tmp_path / "p.safetensors", tmp_path / "p.json", tmp_path / "report" / "r.html"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--ratio", "0.5", "--data", str(tiny_data),
                 "--workers", "0", "--latency-runs", "2", "--out", str(out), "--json", str(js),
                 "--report", str(page)]) == 0
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
    assert titles == ["channels per layer", "γ histogram before", "γ histogram after", "per-layer latency",
                      "PR curve before", "PR curve after"]
    assert all(complete and w >= 300 and h >= 150 for _, complete, w, h in plots), plots
    assert cells["params-after"] == f"{count_params(pruned):,}"
    assert cells["params-before"] == f"{summary['before']['params']:,}"
    assert cells["gflops-after"] == f"{round(total_gflops(profile(pruned, 96)), 4):.4g}"
    assert cells["map-after"] == f"{summary['after']['map']:.4f}"
    assert cells["latency_ms-after"] == f"{summary['after']['latency_ms']:.2f}"
    speedup = summary["before"]["latency_ms"] / summary["after"]["latency_ms"]
    assert cells["speedup"] == f"{speedup:.2f}×"


def test_report_shows_the_sensitivity_curves_and_what_was_done(tmp_path):
    """Without a browser: the sections that depend on the options (sensitivity, no latency) are there or not."""
    model = randomize_bn(create_model("yolov5n", nc=2))
    weights = save_model(tmp_path / "b.safetensors", model, ModelInfo(model.spec, ["a", "b"], 64))
    ratios = [0.25, 0.5, 0.75]
    curves = SensitivityCurves("m", "l1", "map", 0.5, ratios, [
        GroupCurve(g.name, g.size, list(g.producers), [0.5 - 0.1 * r for r in ratios], [0.1 * r for r in ratios])
        for g in ChannelGraph.trace(model).prunable])
    sens = tmp_path / "s.json"
    sens.write_text(json.dumps(curves.to_dict()))
    page = tmp_path / "r.html"
    assert main(["prune", "--weights", str(weights), "--method", "l1", "--target-flops", "0.6", "--allocation",
                 "sensitivity", "--sensitivity", str(sens), "--latency-runs", "0",
                 "--out", str(tmp_path / "p.safetensors"), "--report", str(page)]) == 0
    text = page.read_text()
    alts = re.findall(r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,[A-Za-z0-9+/=]{100,}"', text)
    assert alts == ["channels per layer", "γ histogram before", "γ histogram after", "sensitivity"]
    assert "latency not measured" in text and "Per-layer latency" not in text
    assert "<th>allocation</th><td>sensitivity</td>" in text and "<th>round_to</th><td>8</td>" in text
