"""The one config schema: YAML file -> typed dataclasses, plus dotted overrides from the command line.

    cfg = load_config("configs/coco.yaml", ["train.epochs=2", "data.shards=shards/coco"])

Every key has a default here, and these defaults are the documented ones (README, "Configuration").
Unknown keys, wrong types and missing files raise `ConfigError` naming the key: one line, exit code 2.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vaedist.errors import ConfigError
from vaedist.files import write_text_atomic


@dataclass
class DataConfig:
    shards: str = "shards/coco"  # a directory written by `python -m vaedist.shard` (holds manifest.json)
    train_split: str = "train"
    val_split: str = "val"
    backend: Literal["auto", "dali", "reference"] = "auto"  # auto: DALI where it imports
    crop: int = 375  # seed: CenterCrop(375), in pixels of the original image; zero padding when smaller
    size: int = 64  # output is size x size
    flip: bool = True  # random horizontal flip, training only
    cache: Literal["off", "auto", "device", "host"] = "off"  # decode-once cache of cropped+resized uint8
    # DALI CPU threads / DataLoader worker processes per training process; -1 = auto (vaedist.threads):
    # 4 on a GPU, half of the process's cores on the CPU (torch gets the other half)
    workers: int = -1
    prefetch: int = 2  # batches decoded ahead
    seed: int = 12345  # shuffling and flips; every rank derives its own stream from it
    # A sample that fails to decode (damaged after sharding): `skip` replaces it in its batch and goes on,
    # `stop` ends the run naming it. More than `max_bad_fraction` of a split bad stops the run either way.
    bad_samples: Literal["skip", "stop"] = "skip"
    max_bad_fraction: float = 0.001  # of the split; at least one bad sample is always tolerated under skip


@dataclass
class SpatialConfig:
    """`model.arch: spatial`: a latent-diffusion-style convolutional VAE with a [latent_channels, S/f, S/f] latent."""

    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 256])  # width of each resolution level
    downsample: int = 8  # f: the latent's side is data.size / f; needs log2(f) + 1 levels in `channels`
    blocks: int = 1  # residual blocks per level in the encoder (the decoder has one more, as in LDM)
    latent_channels: int = 4
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    # DC-AE's parameter-free shortcuts around every downsampling/upsampling and the latent (vaedist/models/spatial.py);
    # the last width must then be a multiple of latent_channels
    shortcuts: bool = False


@dataclass
class ModelConfig:
    arch: Literal["seed", "spatial"] = "seed"  # seed: the seed's VAE (the keys below); spatial: model.spatial.*
    # arch seed: latent vector size, convolution widths, fully connected width, BatchNorm momentum
    latent_dim: int = 128
    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    hidden_dim: int = 1024  # encoder's fully connected layer
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 32])
    # The seed passes momentum=0.9 to BatchNorm: running stats then follow the current batch almost
    # entirely (PyTorch's default is 0.1). Kept as the default so checkpoints behave like the seed's.
    bn_momentum: float = 0.9
    spatial: SpatialConfig = field(default_factory=SpatialConfig)


@dataclass
class OptimConfig:
    # sgd: plain SGD (with momentum if set); its step scales with the loss, so train.lambda_mse scales the decoder's
    # step with it, where RMSprop/Adam cancel a constant factor (README, "What lambda_mse does").
    name: Literal["rmsprop", "adam", "adamw", "sgd"] = "rmsprop"
    lr: float = 1e-3
    alpha: float = 0.9  # RMSprop smoothing (seed: 0.9)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0  # RMSprop and SGD
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/AdamW only
    scheduler: Literal["exponential", "cosine", "none"] = "exponential"
    gamma: float = 0.75  # ExponentialLR, stepped once per epoch (seed)
    warmup_epochs: float = 0.0  # cosine only: linear warm-up, then cosine to min_lr
    min_lr: float = 0.0
    grad_clip: float = 0.0  # max gradient norm per sub-network; 0 = off


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 512  # global batch: split evenly across processes
    # vae, beta-vae: the seed's losses, sums over the batch (vaedist.losses). per-image: both losses are means
    # over the batch's images, loss_encoder = mean(mse) + beta * mean(kl): the KL's weight relative to the
    # reconstruction is beta whatever the batch size.
    mode: Literal["vae", "beta-vae", "per-image"] = "vae"
    kl_weight: Literal["batch", "one"] = "batch"  # vae mode: KL summed over the batch times 1/batch or 1
    beta: float = 1.0  # beta-vae and per-image modes
    kl_warmup_epochs: float = 0.0  # the KL weight grows linearly from 0 to its value over this many epochs
    # Guard: a training step whose KL per latent value (nats, batch mean) exceeds this, or whose log-variance
    # reaches its upper clamp, is counted as a blow-up (train/blowups) and reported on the console.
    blowup_kl: float = 1000.0
    lambda_mse: float = 1e-6  # weight of the reconstruction error in the decoder's loss (seed config)
    encoder: OptimConfig = field(default_factory=OptimConfig)
    decoder: OptimConfig = field(default_factory=OptimConfig)
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"  # auto: bf16 where supported, else fp32
    channels_last: bool = False
    compile: bool = False
    # Several GPUs: BatchNorm statistics over the global batch like the seed's single GPU (CUDA only;
    # torch's SyncBatchNorm has no CPU kernel, so CPU processes normalise over their own share).
    sync_batchnorm: bool = True
    # The seed decodes a batch of z ~ N(0, I) every training step; unused by any loss, it still moves the
    # decoder's BatchNorm running statistics, hence every evaluation output (vaedist.models.seed.prior_pass).
    prior_pass: bool = False
    eval_latent: Literal["mean", "sample"] = "mean"  # evaluation decodes mu, or a sampled z like the seed
    seed: int = 8
    log_every: int = 10  # steps between training metric rows
    eval_every: int = 1  # epochs between evaluations (0 = only at the end)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = only at epoch ends)
    keep_checkpoints: int = 2
    max_steps: int = 0  # stop after this many steps (0 = run all epochs); for smoke tests and benchmarks
    # Seconds a collective (gradient all-reduce, log row, checkpoint barrier) may wait for the other ranks: a
    # frozen or vanished rank then ends the job (one line naming it) instead of holding it until its time limit.
    collective_timeout: float = 300.0
    # torch's intra-op threads per process; 0 = auto (vaedist.threads): on the CPU the process's cores minus
    # the decoder's threads (at least 1), on a GPU torch's own default
    torch_threads: int = 0


@dataclass
class RunConfig:
    dir: str = "runs/default"  # run directory: config, metrics.jsonl, images/, checkpoints/, final/
    name: str = ""  # W&B run name; empty = derived from dataset, mode and weights


@dataclass
class LoggingConfig:
    wandb: bool = True
    project: str = "vaedist"
    entity: str = ""
    mode: Literal["auto", "online", "offline"] = "auto"  # auto: online with credentials, else offline
    group: str = ""  # empty = derived from dataset and mode
    tags: list[str] = field(default_factory=list)  # added to the derived tags
    num_reconstructions: int = 16  # validation images shown above their reconstructions
    num_samples: int = 25  # prior samples decoded at every evaluation (seed: 25)
    table_rows: int = 512  # rows of the latent-means table (W&B projection panel)
    # The table (one thumbnail file per row) goes to W&B every table_every evaluations and at the last, so a
    # 100-epoch run stays under ~2,000 W&B files (1 = every evaluation); thumbnails are thumbnail_size px.
    table_every: int = 50
    thumbnail_size: int = 32
    keep_images: int = 10  # evaluations whose PNGs stay in RUN_DIR/images (plus *_latest.png); 0 = all
    projection_points: int = 2000  # validation latent means in the 2-D scatter
    interpolation_pairs: int = 4  # strips between fixed pairs of validation images (images 2i and 2i+1); 0 = none
    interpolation_steps: int = 8  # images per strip, both ends included (the two reconstructions)


@dataclass
class ProbeConfig:
    # Labelled datasets only: a linear probe and k-NN on the latent means (val/probe_acc, val/knn_acc).
    train_samples: int = 5000  # training images (a seeded random subset) the probe is fitted on; 0 = off
    val_samples: int = 5000  # the first validation images it is scored on
    knn_k: int = 20  # neighbours voting in val/knn_acc
    max_iter: int = 1000  # logistic regression (lbfgs) iterations


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


# --- YAML <-> dataclasses -------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert only where YAML is ambiguous (1 -> 1.0)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of keys, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is Literal:
        # YAML 1.1 reads a bare off/on as a boolean: `cache: off` means the choice "off".
        if isinstance(value, bool) and ("on" if value else "off") in typing.get_args(tp):
            value = "on" if value else "off"
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML (YAML 1.1) reads "1e-06" without a dot as a string; W&B sweep agents pass floats that way.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .inf / .nan: no key of ours means anything with them
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    return value


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{prefix}{key}' (known under '{prefix or 'top level'}': {', '.join(sorted(names))})"
            )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested config dict as dotted keys: {"train": {"epochs": 2}} -> {"train.epochs": 2}."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value (e.g. train.epochs=2)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    # Keep strings that YAML would turn into something else only where the key is a string (paths like 1e3)
    return key.strip().split("."), value


def _set_dotted(tree: dict, path: list[str], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{text}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def _string_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted names of every str-typed key, so that `run.dir=123` stays the string '123'."""
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out |= _string_keys(tp, prefix + f.name + ".")
        elif tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
            out.add(prefix + f.name)  # also choices: YAML would read data.cache=off as False
    return out


def _unshared(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or only defaults when `path` is None), apply `key=value` overrides, validate."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file '{path}' is a directory; give a YAML file, e.g. configs/demo.yaml")
        if not path.is_file():
            if path.exists():  # a FIFO, a socket, a device: reading it could block forever
                raise ConfigError(f"config file '{path}' is not a regular file; give a YAML file")
            raise ConfigError(f"config file '{path}' not found (shipped configs are in configs/)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {err.start}: {err.reason}); "
                              "save it as UTF-8") from None
        except OSError as err:
            raise ConfigError(f"config file '{path}' cannot be read: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            problem = str(getattr(err, "problem", None) or err).splitlines()[0]  # the first line: no "in <string>"
            raise ConfigError(f"config file '{path}'{where} is not valid YAML: {problem}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, train:, ...)")
        # YAML anchors (`encoder: &optimizer` ... `decoder: *optimizer`) load as one shared dict: copy every
        # node, so that an override of train.encoder.lr doesn't change the decoder's too.
        tree = _unshared(loaded)
    strings = _string_keys(Config)
    for text in overrides:
        keys, value = _parse_override(text)
        if ".".join(keys) in strings and not isinstance(value, str):
            value = text.split("=", 1)[1]
        _set_dotted(tree, keys, value, text)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def _at_least(low: float) -> tuple[Any, str]:
    return (lambda v: v >= low), f"at least {low}"


_POSITIVE = ((lambda v: v > 0), "greater than 0")
_UNIT = ((lambda v: 0 <= v <= 1), "between 0 and 1")  # BatchNorm momentum
_UNIT_BELOW_1 = ((lambda v: 0 <= v < 1), "at least 0 and below 1")  # RMSprop alpha, Adam betas


def _check_spatial(sp: SpatialConfig) -> None:
    """model.spatial.*: ranges, and the widths list matching the downsampling factor (one level per halving + 1)."""
    checks = [
        ("model.spatial.downsample", sp.downsample, ((lambda v: v >= 1 and v & (v - 1) == 0), "a power of 2 (1, 2, 4, 8, ...)")),
        ("model.spatial.blocks", sp.blocks, _at_least(0)),
        ("model.spatial.latent_channels", sp.latent_channels, _at_least(1)),
        ("model.spatial.norm_groups", sp.norm_groups, _at_least(1)),
    ]
    checks += [(f"model.spatial.channels[{i}]", c, _at_least(1)) for i, c in enumerate(sp.channels)]
    for key, value, (holds, text) in checks:
        if not holds(value):
            raise ConfigError(f"config key '{key}' must be {text}, got {value!r}")
    levels = sp.downsample.bit_length()  # log2(f) + 1
    if len(sp.channels) != levels:
        raise ConfigError(f"config key 'model.spatial.channels' must list {levels} widths for model.spatial.downsample="
                          f"{sp.downsample} (one per resolution level), got {len(sp.channels)}: {sp.channels}")
    if sp.shortcuts and sp.channels[-1] % sp.latent_channels:
        raise ConfigError(f"config key 'model.spatial.channels' must end with a multiple of model.spatial.latent_channels "
                          f"({sp.latent_channels}) when model.spatial.shortcuts is true, got {sp.channels[-1]}")
    for i, c in enumerate(sp.channels):
        if c % sp.norm_groups:
            raise ConfigError(f"config key 'model.spatial.channels[{i}]' ({c}) must be a multiple of "
                              f"model.spatial.norm_groups ({sp.norm_groups})")


def check_seed_image_size(m: ModelConfig, size: int) -> None:
    """data.size for `model.arch: seed`: each encoder layer halves the side, each decoder layer doubles it."""
    n_enc, n_dec = len(m.encoder_channels), len(m.decoder_channels)
    if size % 2**n_enc or size % 2**n_dec:
        raise ConfigError(f"config key 'data.size' ({size}) must be a multiple of {2 ** max(n_enc, n_dec)} for the "
                          f"{n_enc} encoder and {n_dec} decoder layers (each halves or doubles the side)")


def check_spatial_image_size(sp: SpatialConfig, size: int) -> None:
    """data.size for `model.arch: spatial`: the latent's side is data.size / model.spatial.downsample."""
    if size % sp.downsample:
        raise ConfigError(f"config key 'data.size' ({size}) must be a multiple of model.spatial.downsample "
                          f"({sp.downsample}) for model.arch=spatial")


def validate(cfg: Config) -> None:
    """Checks that involve values, not only types: one line naming the first key out of range.

    Conditions are written as what must hold, so NaN fails them too.
    """
    d, m, t, log = cfg.data, cfg.model, cfg.train, cfg.logging
    checks: list[tuple[str, Any, tuple[Any, str]]] = [
        ("data.crop", d.crop, _at_least(1)),
        ("data.size", d.size, _at_least(8)),
        ("data.workers", d.workers, _at_least(-1)),
        ("data.prefetch", d.prefetch, _at_least(1)),
        ("data.max_bad_fraction", d.max_bad_fraction, _UNIT),
        ("model.latent_dim", m.latent_dim, _at_least(1)),
        ("model.hidden_dim", m.hidden_dim, _at_least(1)),
        ("model.bn_momentum", m.bn_momentum, _UNIT),
        ("train.epochs", t.epochs, _at_least(1)),
        # BatchNorm needs two images per process; train.trainer also checks the share of each process.
        ("train.batch_size", t.batch_size, _at_least(2)),
        ("train.beta", t.beta, _at_least(0)),
        ("train.kl_warmup_epochs", t.kl_warmup_epochs, _at_least(0)),
        ("train.blowup_kl", t.blowup_kl, _POSITIVE),
        ("train.lambda_mse", t.lambda_mse, _at_least(0)),
        ("train.log_every", t.log_every, _at_least(1)),
        ("train.eval_every", t.eval_every, _at_least(0)),
        ("train.checkpoint_every", t.checkpoint_every, _at_least(0)),
        ("train.keep_checkpoints", t.keep_checkpoints, _at_least(1)),
        ("train.max_steps", t.max_steps, _at_least(0)),
        ("train.collective_timeout", t.collective_timeout, _POSITIVE),
        ("train.torch_threads", t.torch_threads, _at_least(0)),
        ("logging.num_reconstructions", log.num_reconstructions, _at_least(0)),
        ("logging.num_samples", log.num_samples, _at_least(0)),
        ("logging.table_rows", log.table_rows, _at_least(0)),
        ("logging.projection_points", log.projection_points, _at_least(0)),
        ("logging.interpolation_pairs", log.interpolation_pairs, _at_least(0)),
        ("logging.interpolation_steps", log.interpolation_steps, _at_least(2)),
        ("probe.train_samples", cfg.probe.train_samples, _at_least(0)),
        ("probe.val_samples", cfg.probe.val_samples, _at_least(0)),
        ("probe.knn_k", cfg.probe.knn_k, _at_least(1)),
        ("probe.max_iter", cfg.probe.max_iter, _at_least(1)),
        ("logging.table_every", log.table_every, _at_least(1)),
        ("logging.thumbnail_size", log.thumbnail_size, _at_least(1)),
        ("logging.keep_images", log.keep_images, _at_least(0)),
    ]
    for key in ("encoder_channels", "decoder_channels"):
        channels = getattr(m, key)
        if not channels:
            raise ConfigError(f"config key 'model.{key}' must list at least one channel count, got []")
        checks += [(f"model.{key}[{i}]", c, _at_least(1)) for i, c in enumerate(channels)]
    for part in ("encoder", "decoder"):
        opt: OptimConfig = getattr(t, part)
        name = f"train.{part}"
        if len(opt.betas) != 2:
            raise ConfigError(f"config key '{name}.betas' must hold exactly 2 values (e.g. [0.9, 0.999]), got {opt.betas!r}")
        checks += [
            (f"{name}.lr", opt.lr, _at_least(0)),
            (f"{name}.alpha", opt.alpha, _UNIT_BELOW_1),
            (f"{name}.eps", opt.eps, _POSITIVE),
            (f"{name}.weight_decay", opt.weight_decay, _at_least(0)),
            (f"{name}.momentum", opt.momentum, _at_least(0)),
            *[(f"{name}.betas[{i}]", b, _UNIT_BELOW_1) for i, b in enumerate(opt.betas)],
            (f"{name}.gamma", opt.gamma, _POSITIVE),
            (f"{name}.warmup_epochs", opt.warmup_epochs, _at_least(0)),
            (f"{name}.min_lr", opt.min_lr, _at_least(0)),
            (f"{name}.grad_clip", opt.grad_clip, _at_least(0)),
        ]
    for key, value, (holds, text) in checks:
        if not holds(value):
            raise ConfigError(f"config key '{key}' must be {text}, got {value!r}")
    _check_spatial(m.spatial)
    # here, not only in the models' constructors: the training command then says so before it imports the trainer
    if m.arch == "spatial":
        check_spatial_image_size(m.spatial, d.size)
    else:
        check_seed_image_size(m, d.size)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run records exactly what it ran with."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
