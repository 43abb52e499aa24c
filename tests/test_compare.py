"""`python -m vaedist.compare`: run dirs written by the real Tracker -> one self-contained HTML report, parsed back."""
from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from vaedist.compare import _best_index, compare, main
from vaedist.config import save_config
from vaedist.errors import UserError
from vaedist.sweep.state import PointState, SweepState, read_state, write_state
from vaedist.rundir import IMAGE_KINDS, RunDir


@pytest.fixture(scope="module")
def two_runs(tracking_sample, tmp_path_factory):
    """The seed's KL-weighting ablation: 1/batch vs 1, everything else equal. W&B off: compare needs none of it."""
    base = tmp_path_factory.mktemp("compare")
    runs = []
    for weighting in ("batch", "one"):
        run_dir = base / f"kl-{weighting}"
        tracker, _, _ = tracking_sample.run(run_dir, ["logging.wandb=false", f"train.kl_weight={weighting}"])
        save_config(tracker.cfg, run_dir / "config.yaml")  # what the trainer writes at start-up
        tracker.finish()
        runs.append(run_dir)
    # The second run's final numbers differ, so that the table has a best value to mark.
    with open(runs[1] / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 70, "epoch": 1, "val/mse": 0.001, "val/psnr": 30.0}\n')
    return runs


def test_runs_table_has_the_config_keys_that_differ_as_columns(read_report, two_runs, tmp_path):
    report = read_report(compare(two_runs, tmp_path / "report.html"))
    header = report.header["runs"]
    assert "train.kl_weight" in header and "run.dir" not in header  # run.dir names the run, not the experiment
    config_columns = header[header.index("run") + 1:header.index("best val/mse")]
    assert config_columns == ["train.kl_weight"]  # every other key is the same in both runs
    assert [report.cell("runs", name, "train.kl_weight") for name in ("kl-batch", "kl-one")] == ["batch", "one"]


def test_runs_are_ranked_by_the_best_value_of_the_chosen_metric(read_report, two_runs, tmp_path):
    rows = {d.name: RunDir(d).read_metrics() for d in two_runs}
    best_mse = {name: min(r["val/mse"] for r in rr if "val/mse" in r) for name, rr in rows.items()}
    report = read_report(compare(two_runs, tmp_path / "report.html"))  # default: val/mse, lower is better
    assert report.row_order["runs"] == sorted(best_mse, key=best_mse.get)
    assert report.cell("runs", "kl-one", "#") == "1" and report.cell("runs", "kl-one", "best val/mse") == "0.001"
    for name, value in best_mse.items():
        assert float(report.cell("runs", name, "best val/mse")) == pytest.approx(value, rel=1e-5)
    # higher is better for PSNR: the same order here, since kl-one's last row has the best of both
    report = read_report(compare(two_runs, tmp_path / "psnr.html", sort="val/psnr"))
    best_psnr = {name: max(r["val/psnr"] for r in rr if "val/psnr" in r) for name, rr in rows.items()}
    assert report.row_order["runs"] == sorted(best_psnr, key=best_psnr.get, reverse=True)
    # the KL has no "better" direction: the user says which
    with pytest.raises(UserError, match="--goal minimize or --goal maximize"):
        compare(two_runs, tmp_path / "kl.html", sort="val/kl")
    report = read_report(compare(two_runs, tmp_path / "kl.html", sort="val/kl", goal="maximize"))
    best_kl = {name: max(r["val/kl"] for r in rr if "val/kl" in r) for name, rr in rows.items()}
    assert report.row_order["runs"] == sorted(best_kl, key=best_kl.get, reverse=True)
    with pytest.raises(UserError, match="--sort val/nope: no run logged it"):
        compare(two_runs, tmp_path / "x.html", sort="val/nope")


def test_report_final_metrics_are_each_runs_last_values(read_report, two_runs, tmp_path):
    report = read_report(compare(two_runs, tmp_path / "report.html"))
    for run_dir in two_runs:
        rows = RunDir(run_dir).read_metrics()
        last_mse = [r["val/mse"] for r in rows if "val/mse" in r][-1]
        assert float(report.cell("final-metrics", run_dir.name, "val/mse")) == pytest.approx(last_mse, rel=1e-5)
        assert float(report.cell("final-metrics", run_dir.name, "step")) == rows[-1]["step"]
        assert float(report.cell("runs", run_dir.name, "final val/mse")) == pytest.approx(last_mse, rel=1e-5)
    assert report.cell("final-metrics", "kl-one", "val/mse") == "0.001"
    for key in ("train/loss_encoder", "train/loss_decoder", "train/kl", "val/active_units", "val/psnr"):
        assert key in report.header["final-metrics"], key


def test_report_overlays_every_logged_scalar_as_inline_svg(read_report, two_runs, tmp_path):
    out = compare(two_runs, tmp_path / "report.html")
    report = read_report(out)
    keys = {k for run in two_runs for row in RunDir(run).read_metrics() for k in row} - {"step", "epoch"}
    assert {k for k, kind in report.figure_kinds.items() if kind == "curve"} == keys
    text = out.read_text()
    assert text.count("<svg") == len(keys) and "<?xml" not in text  # two runs: no parameter plots
    assert all("kl-batch" in report.svg_text[k] and "kl-one" in report.svg_text[k] for k in keys)  # legends name the runs


def test_report_embeds_each_runs_latest_images_side_by_side_best_first(read_report, two_runs, tmp_path):
    report = read_report(compare(two_runs, tmp_path / "report.html"))
    assert report.external == []  # self-contained: nothing to fetch, nothing next to the file
    assert len(report.images) == len(IMAGE_KINDS) * len(two_runs)
    by_run_and_kind = {}
    for img in report.images:
        kind = img["alt"].split(" of ")[0]
        by_run_and_kind[(img["data-run"], kind)] = base64.b64decode(img["src"].split(",", 1)[1])
        assert img["data-size"] == "full" and img["src"].startswith("data:image/png;base64,")
    for run_dir in two_runs:
        for kind in IMAGE_KINDS:
            png = by_run_and_kind[(run_dir.name, kind)]
            assert png == (run_dir / "images" / f"{kind}_latest.png").read_bytes()
    recon = [img["data-run"] for img in report.images if img["alt"].startswith("reconstructions")]
    assert recon == report.row_order["runs"] == ["kl-one", "kl-batch"]


def test_run_without_config_or_images_is_still_reported(read_report, two_runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"step": 5, "train/loss_encoder": 3.0}\n{"step": 6, "train/loss_en')  # torn
    report = read_report(compare([two_runs[0], bare], tmp_path / "report.html"))
    assert report.cell("final-metrics", "bare", "train/loss_encoder") == "3"
    assert report.cell("runs", "bare", "train.kl_weight") == "(absent)"
    assert report.row_order["runs"] == ["kl-batch", "bare"]  # no val/mse: ranked last
    assert len(report.images) == len(IMAGE_KINDS)


def test_bad_run_dir_is_a_one_line_error_and_leaves_the_old_report(two_runs, tmp_path):
    out = tmp_path / "report.html"
    compare(two_runs, out)
    before = out.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "vaedist.compare", str(two_runs[0]), str(tmp_path / "missing"), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaedist.compare: error: run directory") and "missing" in lines[0]
    assert out.read_bytes() == before
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    with pytest.raises(UserError, match="not a vaedist run directory"):
        compare([not_a_run], out)
    (not_a_run / "config.yaml").write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        compare([not_a_run], out)
    assert out.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_cli_writes_the_report(read_report, two_runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main([str(d) for d in two_runs] + ["-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert read_report(out).cell("runs", "kl-one", "train.kl_weight") == "one"


@pytest.mark.parametrize("where", ["missing-folder/report.html", "."])
def test_an_output_in_a_missing_folder_or_on_a_folder_is_refused_before_any_work(two_runs, tmp_path, where):
    with pytest.raises(UserError, match="-o/--output .*(does not exist|is a folder)"):
        compare(two_runs, tmp_path / where)
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}*.tmp")) and not list(tmp_path.rglob("*.tmp"))


def test_the_atomic_writer_leaves_no_temporary_file_when_the_rename_fails(tmp_path):
    from vaedist.files import write_text_atomic

    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(OSError):  # os.replace of a file over a folder
        write_text_atomic(folder, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder"]


# --- a whole sweep: 32 runs ------------------------------------------------------------------------------


def photo_grid(food_root: Path, rows: int, per_row: int, seed: int, size: int = 64) -> Image.Image:
    """A grid like the Tracker's (2-px white padding), of real photographs with per-run noise: a realistic PNG."""
    paths = sorted((food_root / "images").rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    grid = Image.new("RGB", (per_row * (size + 2) + 2, rows * (size + 2) + 2), "white")
    for i in range(rows * per_row):
        with Image.open(paths[(i + seed) % len(paths)]) as photo:
            tile = np.asarray(ImageOps.fit(photo.convert("RGB"), (size, size)), dtype=np.float32)
        tile = np.clip(tile + rng.normal(0, 8, tile.shape), 0, 255).astype(np.uint8)
        grid.paste(Image.fromarray(tile), (2 + (i % per_row) * (size + 2), 2 + (i // per_row) * (size + 2)))
    return grid


@pytest.fixture(scope="module")
def sweep_of_32(two_runs, sample_trees, tmp_path_factory):
    """A sweep directory as vaedist.sweep leaves it: sweep.json (its own writer) and 32 point run dirs, each with
    the demo's picture sizes (16 reconstructions and 25 prior samples of 64 px photographs)."""
    base = tmp_path_factory.mktemp("sweep32")
    rng = np.random.default_rng(0)
    template = RunDir(two_runs[0]).read_metrics()
    config = yaml.safe_load((two_runs[0] / "config.yaml").read_text())
    points = []
    for i in range(32):
        lr, beta, weighting = float(10 ** rng.uniform(-4, -2.5)), float(2 ** rng.uniform(-2, 3)), ["batch", "one"][i % 2]
        run = base / f"point-{i:03d}"
        shutil.copytree(two_runs[0], run)
        config["train"].update({"beta": beta, "kl_weight": weighting})
        config["train"]["encoder"]["lr"] = lr
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        quality = 0.02 + 0.01 * abs(math.log10(lr) + 3.3) + 0.002 * beta + rng.normal(0, 0.001)
        # every third run gets worse in its last epoch: ranked by its best value, not its last
        last_epoch = max(r["epoch"] for r in template)
        factor = lambda epoch: (1.5 if i % 3 == 0 else 1.0) if epoch == last_epoch else 1.1  # noqa: E731
        rows = [dict(r, **({"val/mse": quality * factor(r["epoch"])} if "val/mse" in r else {})) for r in template]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        photo_grid(sample_trees["food101"], 2, 16, i).save(run / "images" / "reconstructions_latest.png")
        photo_grid(sample_trees["food101"], 5, 5, 100 + i).save(run / "images" / "prior_samples_latest.png")
        points.append(PointState(index=i, name=run.name, run_id=f"abcdefgh-{i:03d}", status="done", exit_code=0, attempts=1,
                                 parameters={"train.beta": beta, "train.encoder.lr": lr, "train.kl_weight": weighting}))
    write_state(base, SweepState(sweep_id="abcdefgh", name="sweep32", sweep_file="s.yaml", method="random", seed=0,
                                 metric="val/mse", goal="minimize", swept=["train.beta", "train.encoder.lr", "train.kl_weight"],
                                 command=[], program=None, cwd=str(base), points=points))
    return base


def test_a_sweep_of_32_runs_is_ranked_plotted_per_parameter_and_stays_small(read_report, sweep_of_32, tmp_path):
    out = compare([sweep_of_32], tmp_path / "report.html")
    report = read_report(out)
    state = read_state(sweep_of_32)
    best = {p.name: min(r["val/mse"] for r in RunDir(sweep_of_32 / p.name).read_metrics() if "val/mse" in r) for p in state.points}
    ranked = sorted(best, key=best.get)
    last = {p.name: [r["val/mse"] for r in RunDir(sweep_of_32 / p.name).read_metrics() if "val/mse" in r][-1] for p in state.points}
    assert ranked != sorted(last, key=last.get)  # the fixture tells the two orders apart
    assert report.row_order["runs"] == ranked  # every run named, best first
    assert [report.cell("runs", name, "status") for name in ranked] == ["done"] * 32
    assert {"train.beta", "train.encoder.lr", "train.kl_weight"} <= set(report.header["runs"])

    # one plot of the best val/mse per swept parameter; log axes where the values span decades
    axes = {k: report.figure_attrs[k]["data-axis"] for k, kind in report.figure_kinds.items() if kind == "parameter"}
    assert axes == {"train.beta": "log", "train.encoder.lr": "log", "train.kl_weight": "categorical"}

    # curves: the best 5 in colour, named in the legend with their rank; the other 27 grey, one legend entry
    legend = report.svg_text["val/mse"]
    assert all(f"#{rank} {name}" in legend for rank, name in enumerate(ranked[:5], start=1))
    assert "27 other runs" in legend and not any(name in legend for name in ranked[5:])
    svg = out.read_text().split('data-key="val/mse" data-kind="curve">', 1)[1].split("</svg>", 1)[0]
    assert svg.count("<image") == 1  # the grey lines are one raster picture, whatever their number

    # pictures best first: full PNGs for the first 4, JPEG thumbnails for the rest
    recon = [img for img in report.images if img["alt"].startswith("reconstructions")]
    assert [img["data-run"] for img in recon] == ranked
    for img in recon[:4]:
        png = base64.b64decode(img["src"].split(",", 1)[1])
        assert png == (sweep_of_32 / img["data-run"] / "images" / "reconstructions_latest.png").read_bytes()
    for img in recon[4:]:
        assert img["data-size"] == "thumbnail" and img["src"].startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as thumb:
            assert thumb.width <= 530
    full_pngs = sum(p.stat().st_size for p in sweep_of_32.glob("point-*/images/*_latest.png")) * 4 / 3  # as base64
    size = out.stat().st_size
    print(f"\n32-run report: {size / 1e6:.2f} MB (all full PNGs would be {full_pngs / 1e6:.2f} MB of pictures alone)")
    assert size < 7e6 and size < 0.5 * full_pngs  # measured: 5.9 MB here, 4.7 MB for 32 copies of a demo run


def test_a_short_log_axis_has_plain_labels_that_do_not_run_into_each_other():
    """Learning rates over 1.5 decades: matplotlib's default labels every minor tick (2x10^-4, 3x10^-4, ...) at
    10 px, where they overlap; the parameter plot labels 1 and 3 x each power of ten, plainly, at 7 px."""
    import re

    from vaedist.compare import RunRecord, SweepInfo, parameter_svg, rank_runs

    lrs = [1.2e-4, 2.5e-4, 4e-4, 8e-4, 1.5e-3, 2.9e-3]
    runs = [RunRecord(f"r{i}", Path("."), {"train.encoder.lr": lr}, [{"step": 1, "val/mse": 0.05 + i / 1000}])
            for i, lr in enumerate(lrs)]
    svg = parameter_svg(runs, "train.encoder.lr", rank_runs(runs, None, None, SweepInfo()))
    texts = [(re.sub(r"<[^>]+>|\s", "", element.split(">", 1)[1]), re.findall(r"font-size: ([\d.]+)px", element))
             for element in re.findall(r"<text.*?</text>", svg, re.S)]
    x_labels = [(text, sizes) for text, sizes in texts[: [t for t, _ in texts].index("train.encoder.lr")]]
    assert [text for text, _ in x_labels] == ["0.0003", "0.001", "0.003"]
    assert all(set(sizes) == {"7"} for _, sizes in x_labels)


def test_a_spread_over_images_is_not_marked_best():
    assert _best_index("val/psnr", [20.0, 25.0]) == 1
    assert _best_index("val/psnr_std", [3.0, 4.0]) is None  # a standard deviation: no better direction
