"""vaedist.metrics against independent implementations on real photographs: scikit-image's SSIM and PSNR,
numpy's Pearson correlation, numpy's mean and standard deviation over images, and the state sum across
ranks."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from vaedist.metrics import ReconstructionMetrics, mse_per_image, pcc_per_image, psnr_from_mse, ssim_per_image
from vaedist.sample import photo_paths


def skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """The standard definition vaedist reports (Wang et al. 2004, as scikit-image computes it)."""
    return structural_similarity(x, y, channel_axis=0, data_range=1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


def photo_pairs(size: tuple[int, int] = (64, 64)) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample photograph (grey ones as 3 equal channels), [N, 3, H, W] in [0, 1], against degraded
    copies of the kinds a VAE produces: heavy JPEG, blur, noise, and a blurred and darkened one."""
    rng = np.random.default_rng(0)
    originals, degraded = [], []
    for i, path in enumerate(photo_paths()):
        with Image.open(path) as im:
            im = im.convert("RGB").resize(size, Image.BILINEAR)
        kind = i % 4
        if kind == 0:
            buffer = io.BytesIO()
            im.save(buffer, format="JPEG", quality=8)
            out = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64) / 255
        elif kind == 1:
            out = np.asarray(im.filter(ImageFilter.GaussianBlur(2)), dtype=np.float64) / 255
        elif kind == 2:
            out = np.clip(np.asarray(im, dtype=np.float64) / 255 + rng.normal(0, 0.08, (size[1], size[0], 3)), 0, 1)
        else:
            out = 0.7 * np.asarray(im.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64) / 255
        originals.append(np.asarray(im, dtype=np.float64).transpose(2, 0, 1) / 255)
        degraded.append(out.transpose(2, 0, 1))
    return torch.tensor(np.stack(originals)), torch.tensor(np.stack(degraded))


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (11, 11)])
def test_ssim_is_scikit_images_standard_definition_per_image(size):
    x, y = photo_pairs(size)
    ours = ssim_per_image(x.float(), y.float())
    want = np.array([skimage_ssim(x[i].numpy(), y[i].numpy()) for i in range(len(x))])
    assert ours.dtype == torch.float32 and ours.shape == (len(x),)
    np.testing.assert_allclose(ours.numpy(), want, rtol=0, atol=1e-4)
    assert np.abs(ours.numpy() - want).max() < 2e-6  # measured: at most 3e-7 in float32
    assert 0.1 < want.min() and want.max() < 0.99  # the pairs are neither identical nor unrelated


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim_per_image(torch.rand(1, 3, 10, 64), torch.rand(1, 3, 10, 64))


def test_mse_psnr_and_pcc_per_image_equal_scikit_image_and_numpy():
    x, y = photo_pairs()
    mse = mse_per_image(x.float(), y.float())
    psnr = psnr_from_mse(mse)
    pcc = pcc_per_image(x.float(), y.float())
    for i in range(len(x)):
        a, b = x[i].float().double().numpy(), y[i].float().double().numpy()
        assert mse[i].item() == pytest.approx(mean_squared_error(a, b), rel=1e-9)
        assert psnr[i].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), rel=1e-9)
        assert pcc[i].item() == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], rel=1e-9)


def test_psnr_of_an_exact_reconstruction_is_100_db_and_a_flat_original_has_no_pcc():
    x = torch.rand(2, 3, 16, 16)
    x[1] = 0.5  # flat grey
    y = x.clone()
    y[1] += 0.1 * torch.rand(3, 16, 16)
    assert psnr_from_mse(mse_per_image(x, x))[0].item() == pytest.approx(100.0)
    pcc = pcc_per_image(x, y)
    assert pcc[0].item() == pytest.approx(1.0) and torch.isnan(pcc[1])
    metrics = ReconstructionMetrics(ssim=False)
    metrics.update(x, y)
    assert metrics.compute()["pcc"] == pytest.approx(1.0)  # the flat image is left out, not counted as 0


def test_split_means_and_standard_deviations_over_images_survive_the_split_across_ranks():
    """Two ranks' states summed (what torchmetrics does at compute() under DDP) give numpy's mean and std
    (ddof=0) over all images, whatever the uneven split."""
    x, y = photo_pairs()
    x, y = x.float(), y.float()
    ranks = [ReconstructionMetrics(), ReconstructionMetrics()]
    ranks[0].update(x[:3], y[:3])
    ranks[1].update(x[3:9], y[3:9])
    ranks[1].update(x[9:], y[9:])
    ranks[0].merge_state(ranks[1])
    got = ranks[0].compute()
    per_image = {
        "mse": [mean_squared_error(x[i].double().numpy(), y[i].double().numpy()) for i in range(len(x))],
        "psnr": [peak_signal_noise_ratio(x[i].double().numpy(), y[i].double().numpy(), data_range=1) for i in range(len(x))],
        "ssim": [skimage_ssim(x[i].double().numpy(), y[i].double().numpy()) for i in range(len(x))],
        "pcc": [np.corrcoef(x[i].double().numpy().ravel(), y[i].double().numpy().ravel())[0, 1] for i in range(len(x))],
    }
    for name, values in per_image.items():
        assert got[name] == pytest.approx(np.mean(values), rel=1e-6, abs=1e-6), name
        assert got[f"{name}_std"] == pytest.approx(np.std(values), rel=1e-4, abs=1e-6), name
    # per-image mean PSNR is not the PSNR of the split's MSE (what vaedist reported before): the gap is real
    assert got["psnr"] - 10 * np.log10(1 / np.mean(per_image["mse"])) > 0.5

