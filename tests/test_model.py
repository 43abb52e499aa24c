"""The seed's model, losses and update rule, checked against hand-computed numbers and the seed's formulas."""
from __future__ import annotations

import math

import pytest
import torch

from vaedist.batch import GlobalBatch
from vaedist.config import ModelConfig, TrainConfig
from vaedist.errors import ConfigError
from vaedist.losses import loss_weights, scale_decoder_gradients, vae_losses
from vaedist.model import VAE, load_model, save_model


def _seed_parameter_count() -> int:
    """SPEC.md's layers, counted by hand (weights + biases + BatchNorm affine pairs)."""
    conv = lambda cin, cout: cin * cout * 5 * 5  # noqa: E731  (no bias)
    bn = lambda c: 2 * c  # noqa: E731
    encoder = (
        conv(3, 64) + bn(64) + conv(64, 128) + bn(128) + conv(128, 256) + bn(256)
        + 16384 * 1024 + bn(1024)  # fc, no bias
        + 2 * (1024 * 128 + 128)  # mu and logvar heads
    )
    decoder = (
        128 * 16384 + bn(16384)
        + conv(256, 256) + bn(256) + conv(256, 128) + bn(128) + conv(128, 32) + bn(32)
        + 32 * 3 * 25 + 3  # to-RGB conv with bias
    )
    return encoder + decoder


def test_default_model_has_the_seeds_parameter_count_and_shapes():
    model = VAE(ModelConfig(), image_size=64)
    assert sum(p.numel() for p in model.parameters()) == _seed_parameter_count() == 22_764_515
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    x_rec, mu, logvar = model(x)
    assert x_rec.shape == x.shape and mu.shape == logvar.shape == (4, 128)
    assert x_rec.abs().max() <= 1  # Tanh output
    assert model.encoder.features[0][1].momentum == 0.9  # the seed's BatchNorm momentum


def test_initialisation_is_xavier_normal_with_zero_biases():
    torch.manual_seed(0)
    model = VAE(ModelConfig(), image_size=64)
    fc = model.encoder.fc[1].weight  # [1024, 16384]
    expected_std = math.sqrt(2.0 / (fc.shape[0] + fc.shape[1]))
    assert fc.std().item() == pytest.approx(expected_std, rel=0.01)
    assert model.encoder.mu.bias.abs().sum() == 0 and model.decoder.to_rgb[0].bias.abs().sum() == 0


def test_losses_match_the_seed_formulas():
    torch.manual_seed(0)
    x, x_rec = torch.rand(3, 3, 8, 8), torch.rand(3, 3, 8, 8)
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5)
    train = TrainConfig(batch_size=3, lambda_mse=1e-6)
    got = vae_losses(x, x_rec, mu, logvar, loss_weights(train, GlobalBatch(3, 1)))
    mse = sum(0.5 * ((x[i] - x_rec[i]) ** 2).sum() for i in range(3))
    kld = sum(-0.5 * (1 + logvar[i] - mu[i] ** 2 - logvar[i].exp()).sum() for i in range(3))
    assert torch.allclose(got.loss_encoder, kld / 3 + mse)
    assert torch.allclose(got.loss_decoder, 1e-6 * mse)
    assert loss_weights(TrainConfig(kl_weight="one"), GlobalBatch(512, 1)).kl == 1.0
    assert loss_weights(TrainConfig(mode="beta-vae", beta=4.0, batch_size=8), GlobalBatch(8, 1)).kl == 0.5


def test_the_global_batch_is_split_per_process_and_its_weights_do_not_depend_on_the_processes():
    """vaedist.batch: B/P images per process, each process's summed loss times P (DDP averages), 1/B of the
    global batch for the seed's 1/batch weights."""
    one, four = GlobalBatch(512, 1), GlobalBatch(512, 4)
    assert (one.per_process, four.per_process) == (512, 128)
    assert four.global_sum(torch.tensor(2.0)) == 8.0 and one.global_sum(torch.tensor(2.0)) == 2.0
    assert one.per_image() == four.per_image() == 1 / 512
    assert loss_weights(TrainConfig(), one) == loss_weights(TrainConfig(), four)
    with pytest.raises(ConfigError, match=r"'train.batch_size' \(10\) must be divisible by the 4 processes"):
        GlobalBatch(10, 4)
    with pytest.raises(ConfigError, match=r"'train.batch_size' \(4\) must be at least 2 per process, i.e. at least 8"):
        GlobalBatch(4, 4)


@pytest.mark.parametrize("lambda_mse", [1e-6, 1.0])
def test_one_backward_equals_two_autograd_grads_per_subnetwork(lambda_mse):
    """Encoder gets d loss_encoder/d encoder, decoder d loss_decoder/d decoder, both at the same parameters."""
    cfg = ModelConfig(latent_dim=8, encoder_channels=[4, 8], hidden_dim=16, decoder_channels=[8, 4])
    torch.manual_seed(1)
    model = VAE(cfg, image_size=16)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    w = loss_weights(TrainConfig(batch_size=6, lambda_mse=lambda_mse), GlobalBatch(6, 1))
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())

    torch.manual_seed(2)
    losses = vae_losses(x, *model(x), w)
    ref_enc = torch.autograd.grad(losses.loss_encoder, enc, retain_graph=True)
    ref_dec = torch.autograd.grad(losses.loss_decoder, dec)

    torch.manual_seed(2)  # the same reparameterisation noise
    losses = vae_losses(x, *model(x), w)
    losses.loss_encoder.backward()
    scale_decoder_gradients(dec, w.lambda_mse)
    for p, ref in zip(enc + dec, ref_enc + ref_dec):
        torch.testing.assert_close(p.grad, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    # and the decoder's gradient really differs from the encoder loss's (the test can fail)
    if lambda_mse != 1.0:
        assert not torch.allclose(dec[0].grad, torch.autograd.grad(vae_losses(x, *model(x), w).loss_encoder, dec[0])[0])


def test_saved_model_loads_with_one_call_and_reconstructs(tmp_path):
    from vaedist import load_model as top_level_load
    from vaedist.config import Config

    cfg = Config()
    cfg.model = ModelConfig(latent_dim=8, encoder_channels=[4, 8], hidden_dim=16, decoder_channels=[8, 4])
    cfg.data.size = 16
    model = VAE(cfg.model, image_size=16).eval()
    save_model(model, cfg, tmp_path / "run" / "final")
    loaded = top_level_load(tmp_path / "run")  # a run folder resolves to its final/
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))
    assert loaded.sample(3).shape == (3, 3, 16, 16)
    assert load_model(tmp_path / "run" / "final" / "model.safetensors").latent_dim == 8
