"""The models (seed, spatial), losses, guards and update rule, checked against hand-computed numbers, the seed's
formulas and torch.distributions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaedist.batch import GlobalBatch
from vaedist.config import Config, ModelConfig, SpatialConfig, TrainConfig, load_config
from vaedist.errors import ConfigError
from vaedist.losses import kl_warmup_factor, loss_weights, per_dim_kl, scale_decoder_gradients, vae_losses
from vaedist.models import LOGVAR_MAX, LOGVAR_MIN, SeedVAE, SpatialVAE, build_model, latent_shape, load_model, save_model


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
    model = SeedVAE(ModelConfig(), image_size=64)
    assert sum(p.numel() for p in model.parameters()) == _seed_parameter_count() == 22_764_515
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    x_rec, mu, logvar = model(x)
    assert x_rec.shape == x.shape and mu.shape == logvar.shape == (4, 128)
    assert x_rec.abs().max() <= 1  # Tanh output
    assert model.encoder.features[0][1].momentum == 0.9  # the seed's BatchNorm momentum


def test_initialisation_is_xavier_normal_with_zero_biases():
    torch.manual_seed(0)
    model = SeedVAE(ModelConfig(), image_size=64)
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


def tiny_config(arch: str, size: int = 16) -> Config:
    """A model of a few thousand parameters of either architecture, on size x size images."""
    cfg = Config()
    cfg.data.size = size
    cfg.model = ModelConfig(arch=arch, latent_dim=8, encoder_channels=[4, 8], hidden_dim=16, decoder_channels=[8, 4],
                            spatial=SpatialConfig(channels=[8, 16], downsample=2, blocks=1, latent_channels=2, norm_groups=4))
    return cfg


@pytest.mark.parametrize("arch, mode, lambda_mse", [("seed", "vae", 1e-6), ("seed", "vae", 1.0), ("spatial", "vae", 1e-3),
                                                     ("spatial", "per-image", 1e-3)])
def test_one_backward_equals_two_autograd_grads_per_subnetwork(arch, mode, lambda_mse):
    """Encoder gets d loss_encoder/d encoder, decoder d loss_decoder/d decoder, both at the same parameters."""
    torch.manual_seed(1)
    model = build_model(tiny_config(arch))
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    w = loss_weights(TrainConfig(batch_size=6, lambda_mse=lambda_mse, mode=mode, beta=0.5), GlobalBatch(6, 1))
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


def test_per_image_mode_is_the_mean_elbo_with_beta_whatever_the_batch_size():
    torch.manual_seed(0)
    x, x_rec = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    mu, logvar = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    train = TrainConfig(mode="per-image", beta=0.25, batch_size=4, lambda_mse=0.5)
    got = vae_losses(x, x_rec, mu, logvar, loss_weights(train, GlobalBatch(4, 1)))
    mse = torch.stack([0.5 * ((x[i] - x_rec[i]) ** 2).sum() for i in range(4)])
    kld = torch.stack([-0.5 * (1 + logvar[i] - mu[i] ** 2 - logvar[i].exp()).sum() for i in range(4)])
    torch.testing.assert_close(got.loss_encoder, mse.mean() + 0.25 * kld.mean())
    torch.testing.assert_close(got.loss_decoder, 0.5 * mse.mean())
    # The same images twice in a batch of 8: per-image losses unchanged; the seed's 1/batch weighting halves the KL's share
    twice = [torch.cat([t, t]) for t in (x, x_rec, mu, logvar)]
    doubled = vae_losses(*twice, loss_weights(TrainConfig(mode="per-image", beta=0.25, batch_size=8, lambda_mse=0.5), GlobalBatch(8, 1)))
    torch.testing.assert_close(doubled.loss_encoder, got.loss_encoder)
    seed_4 = loss_weights(TrainConfig(mode="vae", kl_weight="batch", batch_size=4), GlobalBatch(4, 1))
    seed_8 = loss_weights(TrainConfig(mode="vae", kl_weight="batch", batch_size=8), GlobalBatch(8, 1))
    assert seed_8.kl / seed_8.mse == seed_4.kl / seed_4.mse / 2


def test_kl_warmup_rises_linearly_from_zero_and_scales_only_the_kl_weight():
    train = TrainConfig(kl_warmup_epochs=2.0, batch_size=4, mode="per-image", beta=0.5)
    assert [kl_warmup_factor(train, step, steps_per_epoch=5) for step in (0, 5, 10, 30)] == [0.0, 0.5, 1.0, 1.0]
    assert kl_warmup_factor(TrainConfig(), step=0, steps_per_epoch=5) == 1.0  # off by default (the seed)
    batch = GlobalBatch(4, 1)
    half = loss_weights(train, batch, kl_factor=0.5)
    assert half.kl == loss_weights(train, batch).kl / 2 and half.mse == loss_weights(train, batch).mse


def test_kl_of_any_latent_shape_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4, 2, 2) * 2, torch.randn(3, 4, 2, 2)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                                  torch.distributions.Normal(0.0, 1.0))
    torch.testing.assert_close(per_dim_kl(mu, logvar), reference.flatten(1))


@pytest.mark.parametrize("arch", ["seed", "spatial"])
def test_a_planted_huge_logvar_stays_finite_through_loss_and_backward_and_is_counted(arch):
    """Without the clamp, exp(0.5 * 1e4) overflows: z, the reconstruction, the losses and every gradient are inf/NaN."""
    torch.manual_seed(0)
    cfg = tiny_config(arch)
    model = build_model(cfg)
    with torch.no_grad():  # the encoder's last layer emits logvar = 1e4 for every latent value
        if arch == "seed":
            model.encoder.logvar.bias.fill_(1e4)
        else:
            model.encoder.out[-1].bias[cfg.model.spatial.latent_channels:].fill_(1e4)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    x_rec, mu, logvar = model(x)
    losses = vae_losses(x, x_rec, mu, logvar, loss_weights(TrainConfig(batch_size=4), GlobalBatch(4, 1)))
    assert torch.isfinite(losses.loss_encoder) and torch.isfinite(losses.kl) and torch.isfinite(x_rec).all()
    assert logvar.max() == LOGVAR_MAX == 20.0 and LOGVAR_MIN == -30.0  # LDM's and diffusers' range
    losses.loss_encoder.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert losses.clamped == losses.clamped_high == mu.numel() == losses.latent_values
    assert losses.kl / losses.latent_values > TrainConfig().blowup_kl  # e^20 / 2 per value: the trainer counts a blow-up


def _spatial_parameter_count(widths: list[int], blocks: int, z: int) -> int:
    """LDM's layer list (ldm/modules/diffusionmodules/model.py Encoder/Decoder, no attention), counted by hand."""
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731  (with bias)
    gn = lambda c: 2 * c  # noqa: E731
    res = lambda cin, cout: gn(cin) + conv(cin, cout, 3) + gn(cout) + conv(cout, cout, 3) + (conv(cin, cout, 1) if cin != cout else 0)  # noqa: E731
    enc, c = conv(3, widths[0], 3), widths[0]
    for level, w in enumerate(widths):
        for _ in range(blocks):
            enc, c = enc + res(c, w), w
        if level < len(widths) - 1:
            enc += conv(c, c, 3)  # stride-2 downsampling conv
    enc += 2 * res(c, c) + gn(c) + conv(c, 2 * z, 3)
    dec, c = conv(z, widths[-1], 3) + 2 * res(widths[-1], widths[-1]), widths[-1]
    for level in reversed(range(len(widths))):
        for _ in range(blocks + 1):
            dec, c = dec + res(c, widths[level]), widths[level]
        if level > 0:
            dec += conv(c, c, 3)  # the conv after nearest-neighbour upsampling
    return enc + dec + gn(c) + conv(c, 3, 3)


def test_default_spatial_model_has_ldm_layers_a_4x8x8_latent_and_no_transposed_convolution():
    cfg = load_config(None, ["model.arch=spatial"])
    model = build_model(cfg)
    assert isinstance(model, SpatialVAE)
    assert sum(p.numel() for p in model.parameters()) == _spatial_parameter_count([64, 128, 256, 256], 1, 4) == 14_953_803
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    x_rec, mu, logvar = model(x)
    assert mu.shape == logvar.shape == (2, 4, 8, 8) and x_rec.shape == x.shape
    assert model.latent_shape == latent_shape(cfg) == (4, 8, 8) and model.latent_dim == 256
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.GroupNorm in kinds and not kinds & {torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d, torch.nn.BatchNorm1d}


@pytest.mark.parametrize("size, factor, side", [(48, 8, 6), (40, 8, 5), (64, 4, 16), (32, 16, 2)])
def test_spatial_model_takes_any_image_size_its_factor_divides(size, factor, side):
    levels = factor.bit_length()
    cfg = load_config(None, ["model.arch=spatial", f"data.size={size}", f"model.spatial.downsample={factor}",
                             f"model.spatial.channels={[8] * levels}", "model.spatial.norm_groups=4", "model.spatial.latent_channels=3"])
    model = build_model(cfg)
    x_rec, mu, _ = model(torch.rand(2, 3, size, size))
    assert mu.shape == (2, 3, side, side) and x_rec.shape == (2, 3, size, size) and latent_shape(cfg) == (3, side, side)


@pytest.mark.parametrize("overrides, key", [
    (["data.size=60"], "data.size"),  # 60 is not a multiple of 8
    (["model.spatial.downsample=6"], "model.spatial.downsample"),
    (["model.spatial.channels=[64, 128]"], "model.spatial.channels"),  # f=8 needs 4 levels
    (["model.spatial.norm_groups=24"], "model.spatial.channels[0]"),
    (["model.spatial.latent_channels=0"], "model.spatial.latent_channels"),
])
def test_a_spatial_model_that_cannot_be_built_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        build_model(load_config(None, ["model.arch=spatial", *overrides]))
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_saved_model_loads_with_one_call_and_reconstructs(tmp_path):
    from vaedist import load_model as top_level_load
    from vaedist.config import Config

    cfg = Config()
    cfg.model = ModelConfig(latent_dim=8, encoder_channels=[4, 8], hidden_dim=16, decoder_channels=[8, 4])
    cfg.data.size = 16
    model = SeedVAE(cfg.model, image_size=16).eval()
    save_model(model, cfg, tmp_path / "run" / "final")
    loaded = top_level_load(tmp_path / "run")  # a run folder resolves to its final/
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))
    assert loaded.sample(3).shape == (3, 3, 16, 16)
    assert load_model(tmp_path / "run" / "final" / "model.safetensors").latent_dim == 8


def test_a_saved_spatial_model_loads_back_as_the_spatial_architecture(tmp_path):
    cfg = tiny_config("spatial")
    model = build_model(cfg).eval()
    save_model(model, cfg, tmp_path / "final")
    loaded = load_model(tmp_path / "final")
    assert isinstance(loaded, SpatialVAE) and loaded.latent_shape == (2, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.reconstruct(x), model.reconstruct(x))
    assert loaded.sample(3).shape == (3, 3, 16, 16)


def test_dc_ae_shortcuts_are_a_2x2_average_down_and_a_nearest_copy_up():
    """With their convolutions zeroed, the shortcut paths alone: numpy's block mean and np.repeat."""
    from vaedist.models.spatial import Downsample, Upsample

    x = torch.randn(2, 4, 8, 8)
    down, up = Downsample(4, shortcut=True), Upsample(4, shortcut=True)
    for conv in (down.conv, up.conv):
        torch.nn.init.zeros_(conv.weight), torch.nn.init.zeros_(conv.bias)
    np.testing.assert_allclose(down(x).detach().numpy(), x.numpy().reshape(2, 4, 4, 2, 4, 2).mean(axis=(3, 5)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(up(x).detach().numpy(), x.numpy().repeat(2, axis=2).repeat(2, axis=3), rtol=1e-6, atol=1e-6)
    plain = Downsample(4, shortcut=False)
    torch.nn.init.zeros_(plain.conv.weight), torch.nn.init.zeros_(plain.conv.bias)
    assert plain(x).abs().max() == 0  # off: the (zeroed) convolution alone


def test_spatial_shortcuts_add_no_parameters_and_need_a_last_width_the_latent_channels_divide():
    plain = build_model(load_config(None, ["model.arch=spatial"]))
    with_shortcuts = build_model(load_config(None, ["model.arch=spatial", "model.spatial.shortcuts=true"]))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in with_shortcuts.parameters())
    with pytest.raises(ConfigError, match="model.spatial.channels' must end with a multiple of model.spatial.latent_channels"):
        load_config(None, ["model.arch=spatial", "model.spatial.shortcuts=true", "model.spatial.latent_channels=3"])


@pytest.mark.parametrize("name", ["coco", "food101", "food101_spatial"])
def test_the_recommended_configs_weigh_the_kl_alike_at_any_batch_size_and_warm_up(name):
    """The recipe the quality benchmark chose (configs/*.yaml comments): its KL-to-reconstruction weight is
    beta at every batch size (the seed's 1/batch_size is not), both warm-ups are on, the lr decays by cosine."""
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    small, large = (loss_weights(cfg.train, GlobalBatch(b, 1)) for b in (64, 512))
    assert small.kl / small.mse == pytest.approx(large.kl / large.mse) == pytest.approx(cfg.train.beta)
    assert cfg.train.kl_warmup_epochs > 0 and cfg.train.encoder.warmup_epochs > 0 and cfg.train.decoder.scheduler == "cosine"


@pytest.mark.parametrize("name", ["seed_coco", "seed_food101"])
def test_the_seed_configs_keep_the_seeds_batch_dependent_kl_weight_and_schedule(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    small, large = (loss_weights(cfg.train, GlobalBatch(b, 1)) for b in (64, 512))
    assert (small.kl, large.kl, small.mse) == (1 / 64, 1 / 512, 1.0)
    t = cfg.train
    assert (cfg.model.arch, cfg.model.bn_momentum, t.mode, t.kl_warmup_epochs, t.encoder.name, t.encoder.scheduler,
            t.encoder.gamma, t.lambda_mse, t.batch_size) == ("seed", 0.9, "vae", 0.0, "rmsprop", "exponential", 0.75, 1e-6, 512)
