"""The GPU check: one command that installs what an offline GPU machine lacks, proves every GPU path and
measures it, within a fixed time, and writes a small report even when a stage fails.

    bash launch/gpu_check.sh OUT_DIR [WHEELS_DIR] [options]      (= python -m vaedist.bench.gpu_check ...)

Modules, in the order the check uses them (this package's own process imports only the standard library,
so that it runs before anything is installed; every stage is a process of its own):
  plan         the stages: what each runs, its time budget, what it needs (CUDA, an earlier stage)
  runner       runs one stage's commands under its timeout and keeps the end of its output
  wheels       stage `install`: joins `part-NN` pieces, picks the wheels the machine lacks, pip --target
  environment  stage `environment`: every runtime dependency imports; device, driver and versions
  dataset      stage `data`: full-size COCO-like JPEG photographs in a COCO 2017 tree (then the sharder)
  readback     stage `real_run`, second command: what the training run left (metrics, W&B offline run)
  report       gpu-report.md / gpu-report.json / gpu-report.png: figures, goals, tests, stage timings
  check        the loop: plan -> run each stage in turn -> rewrite the report after each
"""
