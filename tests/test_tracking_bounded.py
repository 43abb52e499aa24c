"""Long runs stay bounded: the latent table every logging.table_every evaluations and at the last, small
thumbnails, the run dir's PNGs of the last logging.keep_images evaluations (read back from a real offline run)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.transform import downscale_local_mean

from vaedist.rundir import IMAGE_KINDS

sys.path.insert(0, str(Path(__file__).parent))
from test_tracking import history, inspect_records  # noqa: E402  (the readers of the offline run)


@pytest.fixture(scope="module")
def bounded_run(tracking_sample, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bounded") / "run"
    tracker, _, results = tracking_sample.run(
        run_dir, ["logging.table_every=2", "logging.keep_images=2", "logging.thumbnail_size=16"], epochs=5)
    tracker.finish()
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    return {"dir": run_dir, "records": inspect_records(offline), "results": results}


def test_latent_table_every_k_evaluations_and_at_the_last(bounded_run):
    evals = [row for row in history(bounded_run["records"]) if "val/mse" in row]
    assert [row["epoch"] for row in evals] == [0, 1, 2, 3, 4]
    with_table = [row["epoch"] for row in evals if "latents/means._type" in row]
    assert with_table == [1, 3, 4]  # evaluations 2 and 4 (every 2nd) and 5 (the last)
    assert all(f"images/{kind}._type" in row for row in evals for kind in ("reconstructions", "prior_samples"))


def test_table_thumbnails_are_box_filtered_to_thumbnail_size(bounded_run):
    records = bounded_run["records"]
    artifact = [r["artifact"] for r in records if r["type"] == "artifact" and "latentsmeans" in r["artifact"]["name"]][-1]
    files = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    table = json.loads(files["latents/means.table.json"].read_text())
    result = bounded_run["results"][-1]
    for row, original in zip(table["data"], result.thumbnails):
        thumb = np.asarray(Image.open(files[row[0]["path"]])).astype(float)
        assert thumb.shape == (16, 16, 3)
        expected = downscale_local_mean(original.permute(1, 2, 0).numpy().astype(float), (2, 2, 1))
        assert np.abs(thumb - expected).max() <= 1.0  # 8-bit rounding of the same 2x2 means


def test_run_dir_keeps_the_last_n_evaluations_pngs_and_the_latest(bounded_run):
    images = bounded_run["dir"] / "images"
    for kind in IMAGE_KINDS:
        kept = sorted(p.name for p in images.glob(f"{kind}_e*.png"))
        assert kept == [f"{kind}_e003.png", f"{kind}_e004.png"], kind
        assert (images / f"{kind}_latest.png").read_bytes() == (images / f"{kind}_e004.png").read_bytes()
