"""`python -m vaedist.compare`: run dirs written by the real Tracker -> one self-contained HTML report, parsed back."""
from __future__ import annotations

import base64
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vaedist.compare import _best_index, compare, main
from vaedist.config import save_config
from vaedist.errors import UserError
from vaedist.rundir import IMAGE_KINDS, RunDir


class ReportParser(HTMLParser):
    """Collects what the tests look at: table rows by data-key, images, inline SVGs, external references."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, dict[str, list[str]]] = {}  # table class -> data-key -> cell texts
        self.images: list[dict[str, str]] = []
        self.svg_figures: list[str] = []
        self.external: list[str] = []
        self._table = self._row = None
        self._cell: list[str] | None = None
        self._figure_key = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href"):
            if name in a and not a[name].startswith(("data:", "#")):
                self.external.append(a[name])
        if tag == "table":
            self._table = a.get("class")
            self.tables.setdefault(self._table, {})
        elif tag == "tr" and self._table and "data-key" in a:
            self._row = a["data-key"]
            self._cells: list[str] = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "figure" and "data-key" in a:
            self._figure_key = a["data-key"]
        elif tag == "svg" and self._figure_key:
            self.svg_figures.append(self._figure_key)
            self._figure_key = None

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table][self._row] = self._cells[1:]  # the first cell repeats the key
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


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


def test_report_shows_only_the_config_keys_that_differ(two_runs, tmp_path):
    report = parse(compare(two_runs, tmp_path / "report.html"))
    diff = report.tables["config-diff"]
    assert set(diff) == {"train.kl_weight"}  # run.dir differs too, but names the run rather than the experiment
    assert diff["train.kl_weight"] == ["batch", "one"]


def test_report_final_metrics_are_each_runs_last_values(two_runs, tmp_path):
    report = parse(compare(two_runs, tmp_path / "report.html"))
    final = report.tables["final-metrics"]
    for i, run_dir in enumerate(two_runs):
        rows = RunDir(run_dir).read_metrics()
        last_mse = [r["val/mse"] for r in rows if "val/mse" in r][-1]
        assert float(final["val/mse"][i]) == pytest.approx(last_mse, rel=1e-5)
        assert float(final["step"][i]) == rows[-1]["step"]
    assert float(final["val/mse"][1]) == 0.001
    for key in ("train/loss_encoder", "train/loss_decoder", "train/kl", "val/active_units", "val/psnr"):
        assert key in final, key


def test_report_overlays_every_logged_scalar_as_inline_svg(two_runs, tmp_path):
    out = compare(two_runs, tmp_path / "report.html")
    report = parse(out)
    keys = {k for run in two_runs for row in RunDir(run).read_metrics() for k in row} - {"step", "epoch"}
    assert set(report.svg_figures) == keys
    text = out.read_text()
    assert text.count("<svg") == len(keys) and "<?xml" not in text
    assert "kl-batch" in text and "kl-one" in text  # legends name the runs


def test_report_embeds_each_runs_latest_images_side_by_side(two_runs, tmp_path):
    report = parse(compare(two_runs, tmp_path / "report.html"))
    assert report.external == []  # self-contained: nothing to fetch, nothing next to the file
    assert len(report.images) == len(IMAGE_KINDS) * len(two_runs)
    by_run_and_kind = {}
    for img in report.images:
        kind = img["alt"].split(" of ")[0]
        by_run_and_kind[(img["data-run"], kind)] = base64.b64decode(img["src"].split(",", 1)[1])
    for run_dir in two_runs:
        for kind in IMAGE_KINDS:
            png = by_run_and_kind[(run_dir.name, kind)]
            assert png == (run_dir / "images" / f"{kind}_latest.png").read_bytes()


def test_run_without_config_or_images_is_still_reported(two_runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"step": 5, "train/loss_encoder": 3.0}\n{"step": 6, "train/loss_en')  # torn
    report = parse(compare([two_runs[0], bare], tmp_path / "report.html"))
    assert report.tables["final-metrics"]["train/loss_encoder"][1] == "3"
    assert report.tables["config-diff"]["train.kl_weight"][1] == "(absent)"
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


def test_cli_writes_the_report(two_runs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main([str(d) for d in two_runs] + ["-o", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert parse(out).tables["config-diff"]["train.kl_weight"] == ["batch", "one"]


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


def test_a_spread_over_images_is_not_marked_best():
    assert _best_index("val/psnr", [20.0, 25.0]) == 1
    assert _best_index("val/psnr_std", [3.0, 4.0]) is None  # a standard deviation: no better direction
