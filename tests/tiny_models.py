"""Config overrides for a tiny model of each architecture on 32-pixel images: what the encode, latent and probe
tests run every architecture the trainer supports with (a few thousand parameters, so a second or two each)."""
from __future__ import annotations

TINY_MODELS: dict[str, list[str]] = {
    "seed": ["model.arch=seed", "model.latent_dim=8", "model.encoder_channels=[8,16,32]",
             "model.decoder_channels=[32,16,8]", "model.hidden_dim=32"],
    # LDM layout at f=4 with DC-AE's shortcuts: a [4, 8, 8] latent at 32 px
    "spatial": ["model.arch=spatial", "model.spatial.channels=[8,16,16]", "model.spatial.downsample=4",
                "model.spatial.norm_groups=4", "model.spatial.latent_channels=4", "model.spatial.shortcuts=true"],
}
TINY_LATENT_SHAPES = {"seed": [8], "spatial": [4, 8, 8]}
