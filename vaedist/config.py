"""The one config schema: YAML file -> typed dataclasses, plus dotted overrides from the command line.

    cfg = load_config("configs/coco.yaml", ["train.epochs=2", "data.shards=shards/coco"])

Every key has a default here, and these defaults are the documented ones (README, "Configuration").
Unknown keys, wrong types and missing files raise `ConfigError` naming the key: one line, exit code 2.
"""
from __future__ import annotations

import dataclasses
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


@dataclass
class ModelConfig:
    latent_dim: int = 128
    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    hidden_dim: int = 1024  # encoder's fully connected layer
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 32])
    # The seed passes momentum=0.9 to BatchNorm: running stats then follow the current batch almost
    # entirely (PyTorch's default is 0.1). Kept as the default so checkpoints behave like the seed's.
    bn_momentum: float = 0.9


@dataclass
class OptimConfig:
    name: Literal["rmsprop", "adam", "adamw"] = "rmsprop"
    lr: float = 1e-3
    alpha: float = 0.9  # RMSprop smoothing (seed: 0.9)
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0  # RMSprop only
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
    mode: Literal["vae", "beta-vae"] = "vae"
    kl_weight: Literal["batch", "one"] = "batch"  # vae mode: KL summed over the batch times 1/batch or 1
    beta: float = 1.0  # beta-vae mode
    lambda_mse: float = 1e-6  # weight of the reconstruction error in the decoder's loss (seed config)
    encoder: OptimConfig = field(default_factory=OptimConfig)
    decoder: OptimConfig = field(default_factory=OptimConfig)
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"  # auto: bf16 where supported, else fp32
    channels_last: bool = False
    compile: bool = False
    # Several GPUs: BatchNorm statistics over the global batch like the seed's single GPU (CUDA only;
    # torch's SyncBatchNorm has no CPU kernel, so CPU processes normalise over their own share).
    sync_batchnorm: bool = True
    seed: int = 8
    log_every: int = 10  # steps between training metric rows
    eval_every: int = 1  # epochs between evaluations (0 = only at the end)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = only at epoch ends)
    keep_checkpoints: int = 2
    max_steps: int = 0  # stop after this many steps (0 = run all epochs); for smoke tests and benchmarks
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


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


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
        if not path.is_file():
            raise ConfigError(f"config file '{path}' not found (shipped configs are in configs/)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file '{path}'{where} is not valid YAML: {getattr(err, 'problem', err)}")
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
        ("model.latent_dim", m.latent_dim, _at_least(1)),
        ("model.hidden_dim", m.hidden_dim, _at_least(1)),
        ("model.bn_momentum", m.bn_momentum, _UNIT),
        ("train.epochs", t.epochs, _at_least(1)),
        # BatchNorm needs two images per process; train.setup also checks the share of each process.
        ("train.batch_size", t.batch_size, _at_least(2)),
        ("train.beta", t.beta, _at_least(0)),
        ("train.lambda_mse", t.lambda_mse, _at_least(0)),
        ("train.log_every", t.log_every, _at_least(1)),
        ("train.eval_every", t.eval_every, _at_least(0)),
        ("train.checkpoint_every", t.checkpoint_every, _at_least(0)),
        ("train.keep_checkpoints", t.keep_checkpoints, _at_least(1)),
        ("train.max_steps", t.max_steps, _at_least(0)),
        ("train.torch_threads", t.torch_threads, _at_least(0)),
        ("logging.num_reconstructions", log.num_reconstructions, _at_least(0)),
        ("logging.num_samples", log.num_samples, _at_least(0)),
        ("logging.table_rows", log.table_rows, _at_least(0)),
        ("logging.projection_points", log.projection_points, _at_least(0)),
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


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), so a run records exactly what it ran with."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
