"""Config mistakes on the training command line: one line naming the key or file, exit code 2, no traceback.
And the shipped seed configs hold the seed's hyper-parameters exactly (SPEC.md)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaedist.config import load_config
from vaedist.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, named",
    [
        (["--config", "configs/demo.yaml", "train.epoch=3"], "train.epoch"),  # unknown key (typo)
        (["--config", "configs/demo.yaml", "train.batch_size=big"], "train.batch_size"),  # wrong type
        (["--config", "configs/nope.yaml"], "configs/nope.yaml"),  # missing file
        (["--config", "configs/demo.yaml", "train.batch_size=3", "data.shards=/nonexistent/shards"], "/nonexistent/shards"),
        (["--config", "configs/demo.yaml", "train.log_every=0"], "train.log_every"),  # out of range (validate)
        (["--config", "configs/demo.yaml", "data.size=63"], "data.size"),  # not a multiple of 8 (model)
    ],
)
@pytest.mark.slow
def test_training_command_reports_config_mistakes_in_one_line(args, named, tmp_path):
    proc = subprocess.run([sys.executable, "launch/train.py", *args, f"run.dir={tmp_path / 'run'}", "logging.wandb=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("train: error: ") and named in lines[0], proc.stderr
    if "shards" not in named:
        assert proc.returncode == 2


@pytest.mark.parametrize("overrides", [
    ["data.size=63"],  # the seed's 3 encoder and 3 decoder layers halve / double the side: a multiple of 8
    ["data.size=40", "model.encoder_channels=[8,16,32,64]"],  # 4 encoder layers: a multiple of 16
    ["data.size=60", "model.arch=spatial"],  # model.spatial.downsample=8
])
def test_an_image_size_the_model_cannot_take_is_refused_at_load_naming_the_key(overrides):
    """Found by load_config, so the training command says so before it imports the trainer (it used to take the
    model's constructor, seconds later)."""
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert message.startswith("config key 'data.size' (") and "must be a multiple of" in message and "\n" not in message
    load_config(None, ["data.size=48", *overrides[1:]])  # 48 is a multiple of 16 and of 8


# What the training command imports before its input has been checked (torch, Accelerate, DALI, torchmetrics: seconds)
_CHECKED_BEFORE_IMPORTS = """
import sys
from vaedist.errors import UserError
from vaedist.train.cli import main
try:
    main(sys.argv[1:])
except UserError as err:
    print(f"{type(err).__name__}: {err}")
print("imported:", sorted(m for m in ("torch", "accelerate", "nvidia.dali", "vaedist.train.trainer") if m in sys.modules))
"""


@pytest.mark.parametrize("mistake, says", [
    ("data.size=63", "ConfigError: config key 'data.size' (63) must be a multiple of 8"),
    ("data.shards={tmp}/none", "UserError: shard directory '{tmp}/none' does not exist"),
    ("data.shards={tmp}", "UserError: '{tmp}/manifest.json' not found: '{tmp}' is not a complete shard directory"),
    ("run.dir={tmp}/taken", "UserError: run.dir '{tmp}/taken' is a file, not a folder"),
])
def test_the_training_command_finds_these_mistakes_before_it_imports_the_trainer(mistake, says, tmp_path):
    (tmp_path / "taken").write_text("x\n")
    args = ["--config", "configs/demo.yaml", f"run.dir={tmp_path / 'run'}", f"data.shards={tmp_path / 'none'}",
            mistake.format(tmp=tmp_path)]  # the last override wins; a run.dir mistake is named before the shards'
    proc = subprocess.run([sys.executable, "-c", _CHECKED_BEFORE_IMPORTS, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0].startswith(says.format(tmp=tmp_path)), proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "imported: []", proc.stdout


def _non_utf8_config(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  epochs: 2  # réglé\n".encode("latin-1"))  # an editor's legacy encoding
    return path


def _folder_as_config(tmp_path: Path) -> Path:
    return tmp_path


def _fifo_as_config(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)  # opening it for reading would block until a writer comes
    return path


@pytest.mark.parametrize("make, says", [(_non_utf8_config, "is not UTF-8 text"), (_folder_as_config, "is a directory"),
                                        (_fifo_as_config, "is not a regular file")])
def test_a_config_file_that_is_no_utf8_text_file_is_one_line(make, says, tmp_path):
    config = make(tmp_path)
    proc = subprocess.run([sys.executable, "launch/train.py", "--config", str(config), f"run.dir={tmp_path / 'run'}",
                           "logging.wandb=false"], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("train: error: ") and str(config) in lines[0] and says in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, named", [
    ("train.encoder.lr=.inf", "train.encoder.lr"),  # accepted before, and the run failed at step 2
    ("train.decoder.lr=.nan", "train.decoder.lr"),
    ("train.beta=-.inf", "train.beta"),
    ("train.lambda_mse=1e400", "train.lambda_mse"),  # a string that float() reads as inf
    ("train.encoder.betas=[0.9, .nan]", "train.encoder.betas[1]"),
    ("model.bn_momentum=.nan", "model.bn_momentum"),
    ("train.encoder.warmup_epochs=.inf", "train.encoder.warmup_epochs"),
    ("data.max_bad_fraction=.nan", "data.max_bad_fraction"),
])
def test_non_finite_numbers_are_refused_at_load_naming_the_key(override, named, tmp_path):
    with pytest.raises(ConfigError, match=f"'{re.escape(named)}' must be a finite number"):
        load_config(None, [override])
    key, value = override.split("=")
    section, *rest = key.split(".")
    nested = value
    for part in reversed(rest):
        nested = {part: nested}
    config = tmp_path / "c.yaml"
    config.write_text(f"{section}: {json.dumps(nested).replace(chr(34), '')}\n")  # the same in a YAML file
    with pytest.raises(ConfigError, match=f"'{re.escape(named)}' must be a finite number"):
        load_config(config)


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.log_every=0", "train.log_every"),
        ("train.batch_size=1", "train.batch_size"),
        ("train.max_steps=-1", "train.max_steps"),
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.hidden_dim=0", "model.hidden_dim"),
        ("model.encoder_channels=[0,8,8]", "model.encoder_channels[0]"),
        ("model.decoder_channels=[]", "model.decoder_channels"),
        ("model.bn_momentum=1.5", "model.bn_momentum"),
        ("train.encoder.lr=-1", "train.encoder.lr"),
        ("train.decoder.lr=-1", "train.decoder.lr"),
        ("train.decoder.eps=0", "train.decoder.eps"),
        ("train.encoder.alpha=1", "train.encoder.alpha"),
        ("train.encoder.betas=[0.9]", "train.encoder.betas"),
        ("train.decoder.betas=[0.9, 1.0]", "train.decoder.betas[1]"),
        ("train.encoder.gamma=.nan", "train.encoder.gamma"),  # NaN fails every range
        ("data.workers=-2", "data.workers"),
        ("data.prefetch=0", "data.prefetch"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("logging.num_samples=-1", "logging.num_samples"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert f"'{named}'" in message and "\n" not in message, message


@pytest.mark.parametrize("override, named, other", [("data.size=0", "data.size", "data.crop"),
                                                    ("data.crop=0", "data.crop", "data.size")])
def test_data_size_and_crop_are_checked_apart(override, named, other):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert named in str(err.value) and other not in str(err.value)


def test_an_override_changes_only_its_own_key_when_the_yaml_shares_a_section_by_anchor():
    shared = (REPO / "configs" / "demo.yaml").read_text()
    assert "encoder: &optimizer" in shared and "decoder: *optimizer" in shared
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.encoder.lr=1e-4", "train.decoder.betas=[0.5, 0.6]"])
    assert cfg.train.encoder.lr == 1e-4 and cfg.train.decoder.lr == 1e-3
    assert cfg.train.decoder.betas == [0.5, 0.6] and cfg.train.encoder.betas == [0.9, 0.999]


@pytest.mark.parametrize("name", ["seed_coco", "seed_food101"])
def test_seed_configs_hold_the_seeds_hyper_parameters(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    t = cfg.train
    assert (t.mode, t.kl_weight, t.beta, t.lambda_mse, t.batch_size, t.epochs, t.seed) == ("vae", "batch", 1.0, 1e-6, 512, 100, 8)
    for opt in (t.encoder, t.decoder):
        assert (opt.name, opt.lr, opt.alpha, opt.eps, opt.weight_decay, opt.momentum) == ("rmsprop", 1e-3, 0.9, 1e-8, 0.0, 0.0)
        assert (opt.scheduler, opt.gamma, opt.grad_clip) == ("exponential", 0.75, 0.0)
    assert (cfg.data.crop, cfg.data.size, cfg.data.flip, cfg.data.seed) == (375, 64, True, 12345)
    m = cfg.model
    assert (m.latent_dim, m.encoder_channels, m.hidden_dim, m.decoder_channels, m.bn_momentum) == (128, [64, 128, 256], 1024, [256, 128, 32], 0.9)
    assert t.precision == "no"


@pytest.mark.parametrize("name", ["coco", "food101", "demo"])
def test_shipped_configs_load(name):
    load_config(REPO / "configs" / f"{name}.yaml", ["train.epochs=1"])
