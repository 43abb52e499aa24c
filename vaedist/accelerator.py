"""The Accelerator a command runs under, built from the config in one place: the precision policy,
torch.compile, W&B as Accelerate's tracker, and the process group's timeout (train.collective_timeout).

    accelerator = build_accelerator(cfg)                    # training (vaedist.train.trainer)
    accelerator = build_accelerator(cfg, training=False)    # standalone evaluation: the precision only
"""
from __future__ import annotations

from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, parse_flag_from_env

from vaedist.config import Config
from vaedist.errors import ConfigError


def resolve_precision(precision: str, cpu: bool = False) -> str:
    """'auto' -> bf16 where the GPU supports it natively, else full precision (CPU autocast, and bf16 emulated
    on pre-Ampere GPUs, are slower than fp32). `cpu`: the run stays on the CPU although a GPU may be there."""
    # The device Accelerate will train on: ACCELERATE_USE_CPU=true keeps a GPU host's run on the CPU.
    cuda = torch.cuda.is_available() and not cpu and not parse_flag_from_env("ACCELERATE_USE_CPU")
    if precision == "fp16" and not cuda:
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA GPU (its loss scaler); use bf16 or no")
    if precision != "auto":
        return precision
    if not cuda:
        return "no"
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.4 has no such argument and reports native support only
        native = torch.cuda.is_bf16_supported()
    return "bf16" if native else "no"


def build_accelerator(cfg: Config, *, training: bool = True, cpu: bool = False) -> Accelerator:
    """The Accelerator of a training run: mixed precision per train.precision, torch.compile per
    train.compile, W&B as Accelerate's tracker unless logging.wandb=false (vaedist.tracking starts the run).
    `training=False` (the evaluate command): the precision only. `cpu=True` stays on the CPU (tests).
    Every collective of the process group gives up after train.collective_timeout (vaedist.collective)."""
    return Accelerator(
        cpu=cpu,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.collective_timeout))],
        mixed_precision=resolve_precision(cfg.train.precision, cpu=cpu),
        dynamo_backend="inductor" if training and cfg.train.compile else None,
        log_with="wandb" if training and cfg.logging.wandb else None,
    )
