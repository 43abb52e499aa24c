"""vaedist.visualize: the PCA projection against a known answer, grids' layout, the pictures at Food-101's scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vaedist import visualize
from vaedist.config import load_config


def test_pca_2d_recovers_the_two_dominant_axes_with_stable_signs():
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    u, v = basis[:, 0], basis[:, 1]
    a, b = torch.randn(300, generator=gen), torch.randn(300, generator=gen)
    a, b = a - a.mean(), b - b.mean()
    b = b - (a @ b) / (a @ a) * a  # uncorrelated, so that u and v are exactly the principal axes
    points = 10 * a[:, None] * u + 3 * b[:, None] * v + 0.01 * torch.randn(300, 16, generator=gen) + 5.0
    coords, ratio = visualize.pca_2d(points)
    assert coords.shape == (300, 2)
    # Up to a sign per axis, the coordinates are the centred (a, b) scaled by 10 and 3.
    for axis, (truth, scale) in enumerate(((a, 10), (b, 3))):
        expected = scale * truth
        sign = torch.sign((coords[:, axis] * expected).sum())
        torch.testing.assert_close(coords[:, axis] * sign, expected, atol=0.1, rtol=0)
    assert float(ratio[0]) == pytest.approx(float(100 * a.var() / (100 * a.var() + 9 * b.var())), abs=1e-3)
    assert float(ratio.sum()) == pytest.approx(1.0, abs=1e-3)
    # Same data, same picture: the sign convention does not depend on the row order.
    shuffled, _ = visualize.pca_2d(points.flip(0))
    torch.testing.assert_close(shuffled.flip(0), coords, atol=1e-4, rtol=0)


def test_pca_2d_of_a_single_latent_dimension_has_a_flat_second_axis():
    coords, ratio = visualize.pca_2d(torch.arange(6.0)[:, None])
    assert coords.shape == (6, 2) and torch.all(coords[:, 1] == 0) and float(ratio[0]) == pytest.approx(1.0)


@pytest.mark.parametrize("classes", [0, 6, 101])
def test_latent_scatter_draws_unlabelled_few_and_many_classes(classes):
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(400, 32, generator=gen)
    labels = torch.randint(0, classes, (400,), generator=gen) if classes else None
    names = [f"class_{i}" for i in range(classes)] if classes else None
    image = visualize.latent_scatter(mu, labels, names)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 300 and image.shape[1] > 400
    colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
    assert len(colours) > (50 if classes else 10)  # points in many colours (and anti-aliasing), not an empty frame


def test_reconstruction_grid_pads_a_short_last_row_and_keeps_pairs_aligned():
    originals = torch.zeros(5, 3, 8, 8)
    reconstructions = torch.ones(5, 3, 8, 8) * 0.5
    grid = visualize.reconstruction_grid(originals, reconstructions, per_row=4)
    assert grid.shape == (4 * 10 + 2, 4 * 10 + 2, 3)  # rows: originals, reconstructions, originals, reconstructions
    tile = lambda r, c: grid[2 + r * 10 : 10 + r * 10, 2 + c * 10 : 10 + c * 10]  # noqa: E731
    assert (tile(0, 3) == 0).all() and (tile(1, 3) == 128).all()
    assert (tile(2, 0) == 0).all() and (tile(3, 0) == 128).all()
    assert (tile(2, 1) == 255).all() and (tile(3, 1) == 255).all()  # padding, white
    with pytest.raises(ValueError):
        visualize.reconstruction_grid(originals, reconstructions[:4])


def test_active_units_count_dimensions_above_a_hundredth_of_a_nat():
    kl = torch.tensor([0.0, 0.005, 0.0100, 0.0101, 2.0])
    assert visualize.active_units(kl) == 2
    image = visualize.kl_per_dim_plot(torch.rand(128) * 3)
    assert image.dtype == np.uint8 and image.shape[2] == 3


@pytest.mark.gpu
def test_prior_samples_decode_on_the_models_device(tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from vaedist.models import SeedVAE as VAE
    from vaedist.rundir import RunDir
    from vaedist.tracking import Tracker

    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = load_config(None, ["logging.wandb=false", "logging.num_samples=25"])
    model = VAE(cfg.model, image_size=cfg.data.size).cuda().train()
    tracker = Tracker(cfg, Accelerator(), RunDir(tmp_path), None)
    samples = tracker.decode_prior_samples(model)
    assert samples.device.type == "cpu" and samples.shape == (25, 3, 64, 64)
    assert model.training and 0 <= float(samples.min()) and float(samples.max()) <= 1
    model.eval()
    with torch.no_grad():
        expected = (model.decode(tracker.prior_noise.cuda()).float().cpu() + 1) / 2
    torch.testing.assert_close(samples, expected)
