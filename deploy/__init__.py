"""The composition root: the only package that knows the topology. Where a change goes:

    deploy/train.py, reproduce.py, evaluation.py, export.py, audit.py, tasks.py, jobs.py, cluster_down.py
                  the command-line entry points (`python -m deploy.<name>`, the Makefile's targets): parse, dispatch
    deploy/run/   one training run: its config resolved once, its directory and files, Ray placement, the driver's
                  loop and its parts (fleet, learner and Redis supervision, signals, weight board, evaluation and
                  checkpoint schedules, disk guard, forecast, progress line, W&B logger)
    deploy/experiments/  `make reproduce`: the seed harness and its child runs, committed seeds, returns plots,
                  results tables, published baselines, provenance (machine, commit)
    deploy/tools/ what users run on a finished run: evaluate, export, audit, load a trained policy, read W&B
                  offline files; and the task listing
    deploy/cluster/  Ray jobs on a cluster (submit, logs, stop, status) and stopping an on-premise cluster
    deploy/cluster*.yaml  the Ray cluster YAMLs (`ray up deploy/cluster.yaml`)

Arrows point into run/ and never out of it: experiments/ and tools/ may import run/, run/ imports none of them,
cluster/ needs nothing of run/ (tests/test_architecture.py checks it).
"""
