"""bench/compress.py end to end at toy size: every stage, the JSON, the table, resuming, refusals."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from yoloslim.errors import UserError
from yoloslim.models.io import read_info

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _compress():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("compress")


TOY = ["--model", "yolov5n", "--images", "12", "--imgsz", "64", "--max-epochs", "2", "--chunk", "1", "--window", "1",
       "--min-gain", "100", "--finetune-epochs", "1", "--target-flops", "0.5", "--batch", "4", "--workers", "0",
       "--threads", "1", "--round-to", "1", "--min-map", "0"]


@pytest.mark.slow
def test_compress_toy_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compress = _compress()
    work = tmp_path / "work"
    argv = [*TOY, "--work", str(work), "--latency-imgsz", "64", "--latency-runs", "5",
            "--latency-seconds", "1"]
    summary = compress.main(argv)
    out = capsys.readouterr().out

    # the baseline: chunks of one epoch; with a window of 1, a 100-point gain threshold and no mAP floor
    # it converges after its second epoch (the first that has an epoch before the window)
    models = work / "models"
    record = json.loads((models / "baseline.json").read_text())
    assert record["converged"] and record["epochs"] == 2 and record["chunks"] == ["chunk-01", "chunk-02"]
    assert len(record["maps"]) == 2 and record["gain"] == pytest.approx(record["maps"][1] - record["maps"][0])
    assert read_info(models / "baseline.safetensors").history[-1]["action"] == "fine-tuned"  # chunk 2
    # then one settling run of F epochs (a 100-point threshold: it converges), whose result is the control
    assert [r["run"] for r in record["settle"]] == ["settle-01"] and record["chunks_converged"]
    settled = work / "runs" / "baseline" / "settle-01" / "weights" / "last.safetensors"
    assert (models / "control.safetensors").read_bytes() == settled.read_bytes()
    assert not (work / "runs" / "control").exists()

    # every stage left its model; the JSON holds every row
    for name in ("baseline", "control", "auto-f50", "auto-f50-kd", "auto-f50-ft"):
        assert (models / f"{name}.safetensors").is_file(), name
    saved = json.loads((work / "compress.json").read_text())
    rows = {r["name"]: r for r in saved["models"]}
    assert list(rows) == ["baseline", "control", "auto-f50", "auto-f50-kd", "auto-f50-ft"]
    assert [rows[n]["epochs"] for n in rows] == [2, 3, 2, 3, 3]
    assert saved["command"].startswith("python bench/compress.py --model yolov5n")
    assert saved["baseline"] == record

    # one architecture for baseline and control, a smaller one for the pruned three
    base = rows["baseline"]
    assert rows["control"]["params"] == base["params"]
    assert rows["auto-f50"]["params"] == rows["auto-f50-kd"]["params"] == rows["auto-f50-ft"]["params"]
    assert 0.4 < 1 - rows["auto-f50-kd"]["flops_removed"] < 0.6  # --target-flops 0.5
    assert rows["auto-f50"]["prune"]["method"] == "group" and rows["auto-f50"]["prune"]["target_flops"] == 0.5
    kd, ft = (read_info(models / f"auto-f50-{k}.safetensors").history[-1] for k in ("kd", "ft"))
    assert kd["action"] == ft["action"] == "fine-tuned"
    assert kd["teacher"] == str(models / "baseline.safetensors") and "teacher" not in ft

    # right after pruning: mAP without and with BN recalibration, from the pruner's report
    cut = rows["auto-f50"]["right_after_pruning"]
    assert set(cut) == {"no_recal", "recal", "kept", "images"} and cut["images"] == 9
    report = json.loads((models / "auto-f50.json").read_text())
    assert cut["no_recal"] == report["uncalibrated"]
    assert rows["auto-f50"]["map"] == (cut["recal"] if cut["kept"] else cut["no_recal"])["map"]

    # figures: mAP in range, deltas against the control, speed-ups against the baseline from one loop
    for r in rows.values():
        assert 0 <= r["map"] <= r["map50"] <= 1
        assert r["torch_ms"] > 0
    assert rows["control"]["delta_map_vs_control"] == 0
    assert rows["auto-f50-kd"]["delta_map_vs_control"] == pytest.approx(
        (rows["auto-f50-kd"]["map"] - rows["control"]["map"]) * 100, abs=1e-3)
    assert rows["auto-f50-kd"]["distill_gain"] == pytest.approx(
        (rows["auto-f50-kd"]["map"] - rows["auto-f50-ft"]["map"]) * 100, abs=1e-3)
    # bootstrap intervals over the val images: each mAP, Δ against the control and distillation's gain (paired)
    assert sorted(p.name for p in (work / "evals").iterdir()) == sorted(f"{n}.npz" for n in rows)
    kd_row = rows["auto-f50-kd"]
    for key, value in (("delta_vs_control_ci", kd_row["delta_map_vs_control"]),
                       ("distill_gain_ci", kd_row["distill_gain"]), ("map_ci", kd_row["map"] * 100)):
        ci = kd_row[key]
        assert ci["value"] == pytest.approx(value, abs=2e-3) and ci["low"] <= ci["high"], key
        assert ci["rounds"] == 1000 and ci["level"] == 0.95 and 0 <= ci["above_zero"] <= 1
    assert "delta_vs_control_ci" not in rows["control"] and "distill_gain_ci" not in rows["auto-f50-ft"]
    assert base["torch_speedup"] == 1.0
    # ONNX Runtime is timed, or its failure (an export that fails its parity check) is recorded
    ort_error = saved["latency"]["onnxruntime_error"]
    assert ort_error or all(r["onnxruntime_ms"] > 0 for r in rows.values())
    assert rows["auto-f50"]["torch_ms"] == rows["auto-f50-kd"]["torch_ms"]  # timed once per architecture
    assert set(rows["auto-f50-kd"]["targets"]) == set(compress.TARGETS)
    assert summary["models"] == saved["models"]

    # the Markdown tables
    assert "Command: `python bench/compress.py --model yolov5n" in out
    assert "Baseline: 2 epochs in 2 chunk(s) and 0 settling run(s) before the control, converged" in out
    assert "settling run 1: " in out and "the last settling run is the control" in out
    assert "| model | epochs | mAP50 | mAP50-95 | Δ mAP50-95 vs control |" in out
    assert "| pruned model | mAP50 | mAP50 + recal | mAP50-95 | mAP50-95 + recal |" in out
    assert "| pruned model | distillation | mAP50-95 no distillation | mAP50-95 distilled | gain (pt) |" in out
    assert out.count("| auto FLOPs 0.5") == 7  # 3 models, recalibration, distillation, 2 target rows
    ci = kd_row["delta_vs_control_ci"]
    assert f"{kd_row['delta_map_vs_control']:+.1f} [{ci['low']:+.1f}, {ci['high']:+.1f}]" in out
    assert "interval of Δ over 1000 draws of the val images" in out

    # a second run reuses every stage; a lost stage output is restored from its finished run, for the
    # fine-tunes --finetunes names only
    (models / "auto-f50-kd.safetensors").unlink()
    (models / "auto-f50-ft.safetensors").unlink()
    run_last = work / "runs" / "auto-f50-ft" / "weights" / "last.safetensors"
    stamp = run_last.stat().st_mtime_ns
    again = compress.main([*TOY, "--work", str(work), "--skip-latency", "--finetunes", "ft"])
    assert run_last.stat().st_mtime_ns == stamp  # copied from the finished run, not trained again
    assert (models / "auto-f50-ft.safetensors").read_bytes() == run_last.read_bytes()
    assert not (models / "auto-f50-kd.safetensors").exists()
    maps = {r["name"]: r["map"] for r in saved["models"]}
    assert {r["name"]: r["map"] for r in again["models"]} == {k: v for k, v in maps.items() if k != "auto-f50-kd"}
    assert again["models"][0]["torch_ms"] is None

    # a lost baseline and control are rebuilt from their finished runs, without training
    chunk_last = work / "runs" / "baseline" / "chunk-02" / "weights" / "last.safetensors"
    stamps = chunk_last.stat().st_mtime_ns, settled.stat().st_mtime_ns
    (models / "baseline.safetensors").unlink()
    (models / "control.safetensors").unlink()
    compress.main([*TOY, "--work", str(work), "--stages", "baseline"])
    assert (chunk_last.stat().st_mtime_ns, settled.stat().st_mtime_ns) == stamps
    assert (models / "baseline.safetensors").read_bytes() == chunk_last.read_bytes()
    assert (models / "control.safetensors").read_bytes() == settled.read_bytes()

    # another method and --ratios share the baseline and control of the folder
    l1 = compress.main([*TOY, "--work", str(work), "--method", "l1", "--ratios", "0.5", "--stages",
                        "prune,measure", "--skip-latency"])
    assert [r["name"] for r in l1["models"]] == ["baseline", "control", "l1-50"]
    assert l1["models"][2]["prune"]["method"] == "l1" and l1["models"][2]["params_removed"] > 0.3

    # --allocation sensitivity measures the curves once, then cuts by them
    sens = compress.main([*TOY, "--work", str(work), "--allocation", "sensitivity", "--stages", "prune,measure",
                          "--skip-latency"])
    row = sens["models"][2]
    assert row["name"] == "auto-sensitivity-f50" and row["prune"]["allocation"] == "sensitivity"
    assert 0.4 < 1 - row["flops_removed"] < 0.6
    curves = json.loads((work / "sensitivity-auto.json").read_text())
    assert compress.prune_event(models / "auto-sensitivity-f50.safetensors")["sensitivity"] == str(
        work / "sensitivity-auto.json") and curves["groups"]

    # the feature-distilled fine-tune: the baseline's head features alone, compared with the plain one
    fd = compress.main([*TOY, "--work", str(work), "--stages", "finetune,measure", "--finetunes", "fd",
                        "--skip-latency"])
    rows = {r["name"]: r for r in fd["models"]}
    assert list(rows) == ["baseline", "control", "auto-f50", "auto-f50-fd", "auto-f50-ft"]
    event = read_info(models / "auto-f50-fd.safetensors").history[-1]
    assert (event["teacher"], event["distill_weight"], event["distill_features"]) == (
        str(models / "baseline.safetensors"), 0.0, 1.0)
    assert rows["auto-f50-fd"]["distill_gain"] == pytest.approx(
        (rows["auto-f50-fd"]["map"] - rows["auto-f50-ft"]["map"]) * 100, abs=1e-3)
    assert "distill_gain_ci" in rows["auto-f50-fd"]
    assert "| auto FLOPs 0.5 | feature-distilled |" in capsys.readouterr().out

    # other settings in the same folder are refused
    with pytest.raises(UserError, match="other settings"):
        compress.main([*TOY[:6], "--max-epochs", "3", *TOY[8:], "--work", str(work), "--stages", "measure"])


def test_baseline_trains_in_chunks_until_converged(tmp_path: Path) -> None:
    """Converged: the best of the last window is under min_gain above the best before it, and at least
    min_map; chunk k starts from chunk k-1's weights; the budget ends an unconverged baseline."""
    _compress()
    from _baseline import Convergence, gain_over_window, train_until_converged

    assert gain_over_window([0.1, 0.2, 0.3], 3) is None  # no epoch before the window yet
    assert gain_over_window([0.1, 0.30, 0.29, 0.302], 2) == pytest.approx(0.002)
    assert gain_over_window([0.1, 0.2, 0.25, 0.3], 2) == pytest.approx(0.1)

    def fake(curve: list[float], settle_maps: list[float] | None = None):
        calls = []

        def chunk(run: Path, epochs: int, settle: bool, **source: str) -> Path:
            calls.append({"settle": settle, **source})
            run.mkdir(parents=True)
            if settle:  # a settling run validates its last epoch only
                k = sum(c["settle"] for c in calls)
                (run / "results.csv").write_text(f"epoch,metrics/mAP50-95\n{epochs},{settle_maps[k - 1]}\n")
                return run / "last.safetensors"
            done = 3 * (len(calls) - 1)
            maps = curve[done:done + epochs]
            (run / "results.csv").write_text("epoch,metrics/mAP50-95\n" + "".join(
                f"{done + i + 1},{m}\n" for i, m in enumerate(maps)))
            return run / "last.safetensors"
        return chunk, calls

    rising = [0.1, 0.2, 0.3, 0.35, 0.38, 0.40, 0.401, 0.402, 0.403, 0.40, 0.404, 0.40]
    chunk, calls = fake(rising)
    last, control, rec = train_until_converged(tmp_path / "a", Convergence(12, chunk=3, window=3), chunk,
                                               "yolov5n")
    assert rec.converged and rec.epochs == 9 and rec.chunks == ["chunk-01", "chunk-02", "chunk-03"]
    assert rec.gain == pytest.approx(0.003) and rec.maps == rising[:9]
    first = tmp_path / "a" / "chunk-01" / "last.safetensors"
    assert calls[0] == {"settle": False, "model": "yolov5n"} and calls[1] == {"settle": False, "weights": str(first)}
    assert last == tmp_path / "a" / "chunk-03" / "last.safetensors" and control is None  # no settling runs

    chunk, _ = fake([0.001] * 12)  # flat, but near zero: not started, never converged
    _, _, rec = train_until_converged(tmp_path / "b", Convergence(12, chunk=3, window=3), chunk, "yolov5n")
    assert not rec.converged and rec.epochs == 12 and rec.gain == 0


def test_settling_runs_follow_the_chunks_until_one_stops_gaining(tmp_path: Path) -> None:
    """The chunks' test passes at 0.403 (epoch 9), but a 5-epoch run gains 6 points: not converged yet.
    The next run starts from that run's result and gains 1.5, the third 0.2 (under half a point): its
    start is the baseline, its result the control."""
    _compress()
    from _baseline import Convergence, train_until_converged

    calls = []

    def run(run: Path, epochs: int, settle: bool, **source: str) -> Path:
        calls.append((run.name, epochs, settle, source))
        run.mkdir(parents=True)
        maps = {"chunk-01": [0.1, 0.2, 0.3], "chunk-02": [0.35, 0.38, 0.40], "chunk-03": [0.401, 0.402, 0.403],
                "settle-01": [0.463], "settle-02": [0.478], "settle-03": [0.480]}[run.name]
        (run / "results.csv").write_text("epoch,metrics/mAP50-95\n" + "".join(f"{i},{m}\n" for i, m in
                                                                             enumerate(maps, 1)))
        return run / "last.safetensors"

    conv = Convergence(12, chunk=3, window=3, settle_epochs=5, max_settle=4)
    base, control, rec = train_until_converged(tmp_path, conv, run, "yolov5n")
    assert [c[0] for c in calls] == ["chunk-01", "chunk-02", "chunk-03", "settle-01", "settle-02", "settle-03"]
    assert [c[1:3] for c in calls[3:]] == [(5, True)] * 3
    assert calls[3][3] == {"weights": str(tmp_path / "chunk-03" / "last.safetensors")}
    assert calls[5][3] == {"weights": str(tmp_path / "settle-02" / "last.safetensors")}
    assert base == tmp_path / "settle-02" / "last.safetensors"
    assert control == tmp_path / "settle-03" / "last.safetensors"
    assert rec.chunks_converged and rec.converged
    assert [round(r["gain"], 4) for r in rec.settle] == [0.06, 0.015, 0.002]
    assert rec.epochs == 9 + 2 * 5  # the two settling runs before the baseline are part of its training

    # out of settling runs: the last run's start and result, reported as not converged
    calls.clear()
    base, control, rec = train_until_converged(tmp_path / "short", Convergence(12, chunk=3, window=3,
                                                                               settle_epochs=5, max_settle=2),
                                               run, "yolov5n")
    assert not rec.converged and len(rec.settle) == 2 and rec.epochs == 9 + 5
    assert (base.parent.name, control.parent.name) == ("settle-01", "settle-02")


@pytest.mark.slow
def test_control_is_trained_apart_when_settling_runs_are_shorter(tmp_path: Path) -> None:
    """Settling runs shorter than F are not the control: the control is F epochs from the baseline, in
    ``runs/control``; the settling runs, the control and the fine-tunes share the fine-tune recipe (AdamW);
    the -kd fine-tunes get --distill-epochs."""
    compress = _compress()
    work = tmp_path / "work"
    argv = [*TOY, "--finetune-epochs", "2", "--settle-epochs", "1", "--finetune-optimizer", "AdamW",
            "--distill-epochs", "1", "--work", str(work), "--stages", "baseline,control,prune,finetune"]
    compress.main(argv)
    settings = compress.Settings(**json.loads((work / "settings.json").read_text()))
    assert not settings.settle_is_control() and settings.finetune_optimizer == "AdamW"
    models, runs = work / "models", work / "runs"
    control = runs / "control" / "weights"
    assert (models / "control.safetensors").read_bytes() == (control / "last.safetensors").read_bytes()
    from yoloslim.engine.train_state import load_state

    def recipe(run: Path) -> tuple[str, int]:
        cfg = load_state(run / "weights" / "last_state.pt")["config"]
        return cfg["optimizer"], cfg["epochs"]

    assert recipe(runs / "baseline" / "settle-01") == ("AdamW", 1)  # the control's recipe, its own length
    assert recipe(runs / "baseline" / "chunk-02")[0] == "auto"  # the chunks keep the baseline's
    for run in ("control", "auto-f50-kd", "auto-f50-ft"):
        assert recipe(runs / run) == ("AdamW", 2), run
    assert load_state(runs / "auto-f50-kd" / "weights" / "last_state.pt")["config"]["distill_epochs"] == 1
    assert json.loads((models / "baseline.json").read_text())["epochs"] == 2  # the settling run's start


def test_a_folder_from_before_the_fine_tune_recipe_settings_is_accepted(tmp_path: Path) -> None:
    """settings.json written before --settle-epochs and the fine-tune recipe existed implies their values
    (settling runs of F epochs, the default recipe): the same run is accepted, another F is refused."""
    compress = _compress()
    work = tmp_path / "work"
    work.mkdir()
    args = compress.parse_args([*TOY, "--work", str(work)])
    old = {k: v for k, v in compress.asdict(compress.check_settings(tmp_path / "fresh", args)).items()
           if k not in compress.IMPLIED}
    (work / "settings.json").write_text(json.dumps(old))
    assert compress.check_settings(work, args).settle_is_control()
    with pytest.raises(UserError, match="finetune_epochs 1 there, 2 here"):
        compress.check_settings(work, compress.parse_args([*TOY, "--finetune-epochs", "2", "--work", str(work)]))
    with pytest.raises(UserError, match="finetune_optimizer 'auto' there, 'AdamW' here"):
        compress.check_settings(work, compress.parse_args([*TOY, "--finetune-optimizer", "AdamW"]))
    with pytest.raises(UserError, match="distill_epochs 0 there, 20 here"):
        compress.check_settings(work, compress.parse_args([*TOY, "--distill-epochs", "20", "--work", str(work)]))
    # a folder made with --hyp: its settling runs and control had that recipe, so it is the fine-tune recipe
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.002\n")
    old["hyp"] = str(hyp)
    (work / "settings.json").write_text(json.dumps(old))
    assert compress.check_settings(work, compress.parse_args([*TOY, "--hyp", str(hyp), "--finetune-hyp", str(hyp)]))
    with pytest.raises(UserError, match="finetune_hyp .* there, None here"):
        compress.check_settings(work, compress.parse_args([*TOY, "--hyp", str(hyp)]))


def test_prune_stage_holds_groups_a_ratio_would_empty(tmp_path: Path) -> None:
    """Slimming at 0.95 empties groups: retried with the fallback floor, which the model file records."""
    from yoloslim.models import create_model
    from yoloslim.models.io import ModelInfo, save_model

    compress = _compress()
    src = tmp_path / "m.safetensors"
    model = create_model("yolov5n", nc=8)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # distinct γ: a global 95 % threshold empties small groups
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.01
    save_model(src, model, ModelInfo(model.spec, [str(i) for i in range(8)], 64))
    args = compress.parse_args(["--model", "yolov5n", "--imgsz", "64", "--method", "slim"])
    out = compress.prune_stage(src, tmp_path / "p.safetensors", {"ratio": 0.95}, None, args)
    event = compress.prune_event(out)
    assert event["min_channels"] == compress.FALLBACK_MIN_CHANNELS and event["held"]


def test_bad_arguments_are_refused() -> None:
    compress = _compress()
    for argv, msg in ((["--model", "yolov9"], "unknown --model"), (["--ratios", "0.5,1.2"], "--ratios"),
                      (["--stages", "train"], "unknown stage"), (["--max-epochs", "0"], "--max-epochs"),
                      (["--target-flops", "0.3,x"], "--target-flops"), (["--chunk", "0"], "--chunk"),
                      (["--settle-runs", "-1"], "--settle-runs"), (["--settle-epochs", "0"], "--settle-epochs"),
                      (["--finetune-hyp", "/no/such.yaml"], "--finetune-hyp"),
                      (["--finetunes", "kd,fast"], "--finetunes"), (["--finetunes", ","], "--finetunes"),
                      (["--bootstrap", "-1"], "--bootstrap")):
        with pytest.raises(UserError, match=msg):
            compress.parse_args(argv)
