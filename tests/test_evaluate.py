"""The evaluation engine's pieces and the evaluate command's refusals (its numbers against a two-process
training run: tests/test_train_distributed.py)."""
from __future__ import annotations

import pytest
import torch

from vaedist import visualize
from vaedist.errors import UserError
from vaedist.evaluate import SplitMetrics
from vaedist.evaluate.cli import main as evaluate_main


def test_a_single_latent_dimension_evaluates_and_plots(tmp_path):
    metrics = SplitMetrics(latent_dim=1, device=torch.device("cpu"))
    x = torch.rand(4, 3, 16, 16)
    metrics.update(x, x.flip(0), torch.rand(4, 1))
    _, kl_per_dim = metrics.compute()
    assert kl_per_dim.shape == (1,)
    assert visualize.kl_per_dim_plot(kl_per_dim).ndim == 3


def test_evaluate_refuses_a_bad_out_path_before_evaluating(tmp_path):
    with pytest.raises(UserError, match="--out .*folder .* does not exist"):
        evaluate_main([str(tmp_path / "no-run"), "--shards", str(tmp_path), "--out", str(tmp_path / "nodir" / "m.json")])
