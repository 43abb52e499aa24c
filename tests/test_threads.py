"""The CPU split between the decoder's threads and torch's: the plan, and a real trainer process applying it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vaedist.threads import ThreadPlan, plan_threads


@pytest.mark.parametrize("cores, workers, torch_threads, expected", [
    (2, -1, 0, (1, 1)),     # the auto split: half each, never zero
    (1, -1, 0, (1, 1)),
    (16, -1, 0, (8, 8)),
    (7, -1, 0, (3, 4)),
    (16, 2, 0, (2, 14)),    # an explicit data.workers: torch takes the rest
    (16, 12, 0, (12, 4)),
    (4, 8, 0, (8, 1)),      # more decoder threads than cores: torch keeps one
    (16, 3, 5, (3, 5)),     # both explicit: used as given
    (4, 0, 0, (0, 4)),      # reference backend in-process (0 workers): torch takes every core
])
def test_cpu_split_gives_each_side_its_share(cores, workers, torch_threads, expected):
    plan = plan_threads(workers, torch_threads, on_cpu=True, cores=cores)
    assert (plan.data, plan.torch) == expected


def test_on_a_gpu_the_old_defaults_stay():
    assert plan_threads(-1, 0, on_cpu=False, cores=32) == ThreadPlan(data=4, torch=None, cores=32)
    assert plan_threads(6, 3, on_cpu=False, cores=32) == ThreadPlan(data=6, torch=3, cores=32)


def test_trainer_set_up_sets_torch_threads_to_its_share_of_the_cores(tmp_path):
    """A real Accelerator on the CPU, two processes on this node (LOCAL_WORLD_SIZE as accelerate launch sets it)."""
    code = (
        "import torch; from vaedist.accelerator import build_accelerator; from vaedist.config import load_config;"
        "from vaedist.train.trainer import use_cores;"
        f"cfg = load_config(None, ['logging.wandb=false', 'run.dir={tmp_path}']);"
        "use_cores(cfg, build_accelerator(cfg, cpu=True)); print('threads', torch.get_num_threads())"
    )
    cores = len(os.sched_getaffinity(0))
    cases = ((1, max(1, cores - max(1, cores // 2))), (2, max(1, cores // 2 - max(1, cores // 4))))
    # both at once: each process spends its seconds importing the trainer, one core each
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "LOCAL_WORLD_SIZE": str(local), "ACCELERATE_USE_CPU": "true"})
             for local, _ in cases]
    for proc, (local, expected) in zip(procs, cases):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"threads {expected}" in stdout
        assert f"CPU threads per process: {max(1, cores // local // 2)} decoder + {expected} torch" in stdout
