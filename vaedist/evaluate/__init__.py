"""Evaluation over a whole split: the seed's metrics on every rank, during training and standalone.

    result = evaluate(model, val_loader, accelerator, cfg)      # engine.py: collective, an EvalResult
    python -m vaedist.evaluate RUN_OR_WEIGHTS --shards DIR       # cli.py: the same numbers from saved weights

`EvalResult` (result.py) is the contract between the engine and its consumer, vaedist.tracking.
"""
from vaedist.evaluate.engine import FirstRows, PerDimMean, SplitMetrics, evaluate
from vaedist.evaluate.result import EvalResult

__all__ = ["EvalResult", "FirstRows", "PerDimMean", "SplitMetrics", "evaluate"]
