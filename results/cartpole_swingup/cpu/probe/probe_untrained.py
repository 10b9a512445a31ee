"""The latent probe of an untrained `cpu`-preset learner (seed 0) on cartpole_swingup: probe.json's `start`.

    .venv/bin/python results/cartpole_swingup/cpu/probe/probe_untrained.py

Publishes the fresh learner's weights (policy and filtering networks) and runs the evaluator's 10 stochastic
episodes with the probe, as a training evaluation would.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from actors.evaluator import Evaluator  # noqa: E402
from common.config import parse_cli  # noqa: E402
from learner.learner import Learner  # noqa: E402

torch.set_num_threads(1)
cfg = parse_cli(["cpu", "--run.task", "cartpole_swingup"])
result = Evaluator(cfg).evaluate(Learner(cfg, 1, seed=0).actor_weights(1), 10, seed=0)
print(json.dumps({"updates": 0, "return_mean": sum(result["returns"]) / 10, "probe": result["probe"]}, indent=1))
