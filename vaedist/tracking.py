"""The one seam for rank-0 side effects of training: metrics.jsonl, images/*.png, and W&B (through Accelerate).

    accelerator = build_accelerator(cfg)                       # vaedist.accelerator: W&B as Accelerate's tracker
    tracker = Tracker(cfg, accelerator, RunDir(cfg.run.dir), manifest, resumed_step=start_step)
    tracker.log({"train/loss_encoder": 1.2, "train/lr_encoder": 1e-3, "epoch": 0}, step=100)
    tracker.log_evaluation(result, accelerator.unwrap_model(model), step=100, epoch=0)
    tracker.finish()

Every method does nothing on processes other than the main one, except `finish`, whose
`accelerator.end_training()` must run on every process (it tears the process group down).

What lands where (the run dir is the record, `vaedist.rundir` its layout; W&B is a view of it):
- metrics: one row per `log` call: {"step": 100, "epoch": 0, "train/...": ...}.
- images: per evaluation and kind (reconstructions, interpolations, prior_samples, latent_pca, kl_per_dim), with a latest copy
  (`vaedist.compare` reads those); only the last logging.keep_images evaluations' PNGs stay.
- W&B under the run dir's wandb/: scalars under "train/..." and "val/...", pictures under "images/...", the
  latent-means table (every logging.table_every evaluations and at the last: each row's thumbnail is a file
  W&B stages and uploads) and the KL histogram under "latents/...". Online when credentials exist, else offline.
  The W&B run id is kept in the run dir, so that a resumed training continues the same W&B run.
"""
from __future__ import annotations

import io
import math
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image

from vaedist import visualize
from vaedist.config import Config, to_dict
from vaedist.errors import UserError
from vaedist.evaluate.result import EvalResult
from vaedist.goals import EVALUATION_GOALS
from vaedist.models import latent_shape
from vaedist.rundir import RunDir
from vaedist.shard.format import Manifest
from vaedist.sweepenv import current_point

DEFAULT_WANDB_HOST = "https://api.wandb.ai"


# --- W&B: online or offline, and the run's identity ------------------------------------------------


def has_wandb_credentials() -> bool:
    """True when wandb.init would find an API key without asking: WANDB_API_KEY, an identity token file,
    or a ~/.netrc (or $NETRC) entry for the W&B host. Reads files only, never the network, so that an
    air-gapped node decides instantly (wandb itself looks in the same places, in this order)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).netloc
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def resolve_wandb_mode(cfg: Config) -> str:
    """'online' or 'offline' for wandb.init (or 'disabled' when WANDB_MODE says so).

    logging.mode=online|offline is obeyed. auto: an explicit WANDB_MODE in the environment wins (the usual
    W&B switch, used by the tests and by cluster admins), else online exactly when credentials exist.
    """
    if cfg.logging.mode != "auto":
        return cfg.logging.mode
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    if env_mode in ("dryrun",):
        return "offline"
    return "online" if has_wandb_credentials() else "offline"


def _short_number(value: float) -> str:
    return f"{value:g}"


def dataset_name(cfg: Config, manifest: Manifest | None) -> str:
    if manifest is not None:
        return manifest.dataset
    return Path(cfg.data.shards).name or "data"


def run_identity(cfg: Config, manifest: Manifest | None) -> tuple[str, str, list[str]]:
    """(name, group, tags) for the W&B run table: one group per dataset and mode, tags per ablation axis.

    The points of a sweep (W&B's agent or `python -m vaedist.sweep`) share one group instead, the sweep's,
    and carry its tags, so that W&B shows a sweep together also when its runs are synced later from offline.
    An explicit logging.group wins over both.
    """
    dataset = dataset_name(cfg, manifest)
    t = cfg.train
    if t.mode == "vae":
        # kl-batch: KL times 1/batch (seed README); kl-one: times 1
        weighting, weighting_tag = f"kl-{t.kl_weight}", f"kl_weight={t.kl_weight}"
    else:
        weighting, weighting_tag = f"beta{_short_number(t.beta)}", f"beta={_short_number(t.beta)}"
    tags = [dataset, t.mode, weighting_tag, f"lambda_mse={_short_number(t.lambda_mse)}"]
    name = cfg.run.name or f"{dataset}-{t.mode}-{weighting}-lmse{_short_number(t.lambda_mse)}"
    point = current_point()
    group = cfg.logging.group or (point.group if point else f"{dataset}-{t.mode}")
    for tag in (point.tags if point else []) + list(cfg.logging.tags):
        if tag not in tags:
            tags.append(tag)
    return name, group, [tag[:64] for tag in tags]  # W&B rejects tags longer than 64 characters


def _read_or_create_run_id(run_dir: RunDir, resuming: bool = True) -> str:
    """The W&B run id of this run dir: stored on first start, reused on resume.

    A training that starts from step 0 gets a new id even when one is stored: the earlier attempt died
    before its first checkpoint, and its W&B steps would shadow the new ones. Under a sweep agent, W&B
    has already chosen the id (WANDB_RUN_ID) and the run must use it; `python -m vaedist.sweep` chooses one
    per point (vaedist.sweepenv).
    """
    point = current_point()
    stored = run_dir.read_wandb_run_id()
    if point is not None:
        run_id = point.run_id
    elif resuming and stored is not None:
        return stored
    else:
        # W&B's own ids are 8 characters of [a-z0-9]; its generator is not public API, so make one alike.
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    run_dir.write_wandb_run_id(run_id)
    return run_id


def png_bytes(image: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 scaled down so that its longer side is at most `size` (never up)."""
    height, width = image.shape[:2]
    if max(height, width) <= size:
        return image
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.BOX))


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


# --- the tracker -----------------------------------------------------------------------------------


class Tracker:
    """Rank-0 side effects of a training run. See the module docstring."""

    def __init__(self, cfg: Config, accelerator: Accelerator, run_dir: RunDir, manifest: Manifest | None,
                 resumed_step: int = 0):
        self.cfg = cfg
        self.accelerator = accelerator
        self.run_dir = run_dir
        self.manifest = manifest
        self.class_names = manifest.classes if manifest is not None else None
        self.active = accelerator.is_main_process
        self.wandb_mode: str | None = None
        self.run = None
        # Steps whose evaluation an earlier session already logged (rank 0 only: it alone reads metrics.jsonl)
        self.evaluated_steps: set[int] = set()
        self.evaluations = 0  # logged so far, earlier sessions included: the latent table's cadence counts them
        # Same prior noise at every evaluation (and across resumes): a picture that changes shows the decoder.
        generator = torch.Generator().manual_seed(cfg.train.seed)
        self.prior_noise = torch.randn(cfg.logging.num_samples, *latent_shape(cfg), generator=generator)
        if not self.active:
            return
        self.run_dir.images.mkdir(parents=True, exist_ok=True)
        self.resumed_step = resumed_step
        # Rows logged after the checkpoint we resume from will be logged again (all of them on a fresh start).
        kept = self.run_dir.keep_metrics_until(resumed_step)
        self.evaluated_steps = {int(row["step"]) for row in kept if "val/mse" in row and "step" in row}
        self.evaluations = len(self.evaluated_steps)
        if cfg.logging.wandb:
            self._start_wandb()

    def _start_wandb(self) -> None:
        import wandb  # ~1 s to import, and only needed with logging.wandb=true

        self.wandb_mode = resolve_wandb_mode(self.cfg)
        name, group, tags = run_identity(self.cfg, self.manifest)
        wandb_kwargs = {
            "dir": str(self.run_dir.path),
            "id": _read_or_create_run_id(self.run_dir, resuming=self.resumed_step > 0),
            "resume": "allow",  # a resumed training continues the same W&B run
            "name": name,
            "group": group,
            "tags": tags,
            "mode": self.wandb_mode,
            "job_type": "train",
        }
        if self.cfg.logging.entity:
            wandb_kwargs["entity"] = self.cfg.logging.entity
        if self.wandb_mode == "offline" and self.cfg.logging.mode == "auto" and "WANDB_MODE" not in os.environ:
            print(f"W&B: no credentials found (WANDB_API_KEY, ~/.netrc); logging offline to {self.run_dir.wandb}", flush=True)
        try:
            self._init_wandb(wandb_kwargs)
        except wandb.errors.Error as err:
            # Credentials on a node that cannot reach the server (a shared home on an air-gapped cluster):
            # in auto mode, train anyway and leave the run to `wandb sync`. An explicit mode=online fails.
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.cfg.logging.mode != "auto" or self.wandb_mode != "online":
                raise UserError(
                    f"W&B could not start its run in {self.wandb_mode} mode ({reason}); with logging.mode={self.cfg.logging.mode} "
                    "that is fatal: log in (wandb login, or WANDB_API_KEY), or use logging.mode=auto or offline"
                ) from err
            print(f"W&B: cannot start an online run ({reason}); logging offline instead", flush=True)
            self.accelerator.trackers = []
            wandb.teardown()  # the service still holds the run id of the failed attempt
            self.wandb_mode = wandb_kwargs["mode"] = "offline"
            self._init_wandb(wandb_kwargs)

    def _init_wandb(self, wandb_kwargs: dict) -> None:
        self._data_dir_set = self.wandb_mode == "offline" and not os.environ.get("WANDB_DATA_DIR")
        if self._data_dir_set:
            # Tables are logged as artifacts whose files wait in a staging area until `wandb sync`; by
            # default that is ~/.local/share/wandb, outside the run dir. Keep them with the run, so that
            # syncing from another node of the cluster (or deleting the run) takes everything along.
            os.environ["WANDB_DATA_DIR"] = str(self.run_dir.wandb_staging.resolve())
        if "wandb" not in [str(kind) for kind in self.accelerator.log_with]:
            raise ValueError("logging.wandb is on: build the Accelerator with vaedist.accelerator.build_accelerator(cfg)")
        self.accelerator.init_trackers(self.cfg.logging.project, config=self._run_config(), init_kwargs={"wandb": wandb_kwargs})
        self.run = self.accelerator.get_tracker("wandb", unwrap=True)
        # The global step is the x axis of every chart (wandb's own step); "epoch" is logged alongside so that
        # W&B can plot against it instead. Summaries: the best value of the quality metrics (W&B then stores
        # e.g. {"val/mse": {"min": ...}}); every other key keeps W&B's default, its last value.
        for key, direction in EVALUATION_GOALS.items():
            self.run.define_metric(key, summary="min" if direction == "minimize" else "max")

    def _run_config(self) -> dict:
        """The whole config, nested (W&B shows train.kl_weight etc. as run-table columns), plus the dataset."""
        config = to_dict(self.cfg)
        if self.manifest is not None:
            config["dataset"] = {
                "name": self.manifest.dataset,
                "classes": len(self.manifest.classes or []),
                "samples": {split: info.samples for split, info in self.manifest.splits.items()},
            }
        point = current_point()
        if point is not None:  # filterable in W&B's run table, like the group
            config["sweep"] = {"id": point.sweep_id, "name": point.name, "launcher": point.launcher}
        return config

    # -- scalars --

    def log(self, metrics: dict[str, float], step: int) -> None:
        """One row of scalars ("train/..." or "val/..." keys; an optional "epoch") at a global step."""
        if not self.active:
            return
        row = {"step": int(step)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        self.run_dir.append_metrics(row)
        if self.run is not None:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=int(step))

    def summarize(self, key: str, value: Any) -> None:
        """A value of the W&B run's summary (e.g. the list of bad samples); the run dir keeps its own record."""
        if self.active and self.run is not None:
            self.run.summary[key] = value

    # -- pictures --

    @torch.no_grad()
    def decode_prior_samples(self, model: torch.nn.Module) -> torch.Tensor:
        """Decode the fixed prior noise: [num_samples, 3, S, S] float in [0, 1]."""
        was_training = model.training
        model.eval()
        try:
            weight = next(model.parameters())
            decoded = model.decode(self.prior_noise.to(device=weight.device, dtype=weight.dtype)).float().cpu()
        finally:
            model.train(was_training)
        return (decoded + 1) / 2  # the decoder's tanh range [-1, 1] -> [0, 1]

    def log_evaluation(self, result: EvalResult, model: torch.nn.Module, step: int, epoch: int,
                       last: bool = False) -> None:
        """Scalars (result.metrics + val/active_units), pictures (PNG + W&B), KL histogram, and the latent table
        every logging.table_every evaluations and at the `last` one."""
        if not self.active:
            return
        self.evaluations += 1
        kl_per_dim = result.kl_per_dim.detach().float().cpu()
        units = visualize.active_units(kl_per_dim)
        pictures = {
            "reconstructions": visualize.reconstruction_grid(result.originals, result.reconstructions),
            "prior_samples": visualize.sample_grid(self.decode_prior_samples(model)),
            "kl_per_dim": visualize.kl_per_dim_plot(kl_per_dim),
        }
        if result.interpolations is not None and result.interpolations.shape[0]:
            pictures["interpolations"] = visualize.interpolation_grid(result.interpolations)
        points = result.mu[: self.cfg.logging.projection_points].float().cpu()
        labels = result.labels[: points.shape[0]].cpu() if result.labels is not None else None
        finite = torch.isfinite(points).all(dim=1)  # an fp16 overflow must not take the whole evaluation down
        points, labels = points[finite], (labels[finite] if labels is not None else None)
        if points.shape[0] >= 2:
            pictures["latent_pca"] = visualize.latent_scatter(
                points, labels, self.class_names, title=f"Latent means, PCA, epoch {epoch} ({points.shape[0]} images)"
            )
        for kind, image in pictures.items():
            self.run_dir.save_image(kind, epoch, png_bytes(image))
        self.run_dir.prune_images(self.cfg.logging.keep_images)

        scalars = {**result.metrics, "val/active_units": units, "epoch": epoch}
        self.log(scalars, step)
        if self.run is None:
            return
        import wandb  # only with logging.wandb=true (see _start_wandb)

        # An infinite KL (an exploding log-variance early in training) is logged as val/kl=inf, but
        # wandb.Histogram refuses a non-finite range and would end the run: chart the finite dimensions only.
        finite_kl = [(d, float(v)) for d, v in enumerate(kl_per_dim) if math.isfinite(float(v))]
        media = {
            "images/reconstructions": wandb.Image(pictures["reconstructions"], caption="top: validation, below: reconstruction"),
            "images/prior_samples": wandb.Image(pictures["prior_samples"], caption="decoded z ~ N(0, I), fixed noise"),
            "images/kl_per_dim": wandb.Image(pictures["kl_per_dim"]),
        }
        if last or self.evaluations % self.cfg.logging.table_every == 0:
            media["latents/means"] = self.latent_table(result)
        if finite_kl:
            media["latents/kl_per_dim"] = wandb.Histogram([v for _, v in finite_kl])
            media["latents/kl_per_dim_bars"] = wandb.plot.bar(
                wandb.Table(columns=["dimension", "kl"], data=[[d, v] for d, v in finite_kl]),
                "dimension",
                "kl",
                title="Mean KL per latent dimension (nats)",
            )
        if "latent_pca" in pictures:
            media["images/latent_pca"] = wandb.Image(pictures["latent_pca"])
        if "interpolations" in pictures:
            media["images/interpolations"] = wandb.Image(
                pictures["interpolations"], caption="each row: decoded from one validation image's latent mean to another's")
        self.accelerator.log(media, step=int(step))

    def latent_table(self, result: EvalResult):
        """wandb.Table: thumbnail, class, then one numeric column per latent dimension (mu_000, ...).

        One column per dimension is the layout W&B's 2-D projection panel (PCA / t-SNE / UMAP) reads.
        Bounded by logging.table_rows and by the thumbnails the evaluation kept; thumbnails are scaled down to
        logging.thumbnail_size px (box filter: each pixel the mean of the pixels it covers).
        """
        import wandb  # only with logging.wandb=true (see _start_wandb)

        rows = min(self.cfg.logging.table_rows, result.mu.shape[0], result.thumbnails.shape[0])
        dims = result.mu.shape[1]
        columns = ["thumbnail", "class", "class_name"] + [f"mu_{d:03d}" for d in range(dims)]
        data = []
        mu = result.mu[:rows].float().cpu().tolist()
        for i in range(rows):
            thumb = thumbnail(result.thumbnails[i].permute(1, 2, 0).cpu().numpy(), self.cfg.logging.thumbnail_size)
            label = int(result.labels[i]) if result.labels is not None else -1
            name = self.class_names[label] if self.class_names and 0 <= label < len(self.class_names) else ""
            data.append([wandb.Image(thumb), label, name] + mu[i])
        return wandb.Table(columns=columns, data=data)

    # -- end --

    def finish(self) -> None:
        """End the W&B run (all processes must call this) and tell the user how to upload an offline run."""
        offline_dirs: list[Path] = []
        if self.active and self.run is not None and self.wandb_mode == "offline":
            offline_dirs = self.run_dir.offline_wandb_runs(self.run.id)
        self.accelerator.end_training()
        self.run = None
        if getattr(self, "_data_dir_set", False):  # leave the process as we found it
            os.environ.pop("WANDB_DATA_DIR", None)
            self._data_dir_set = False
        if offline_dirs:
            # A resumed run has one offline directory per session; syncing them in order rebuilds the run.
            print("W&B run saved offline; upload it with:\n  wandb sync " + " ".join(map(str, offline_dirs)), flush=True)

