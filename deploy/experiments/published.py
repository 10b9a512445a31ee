"""Published pixel-based returns at 100k and 500k environment steps, for the results table and the figure.

Mean over seeds, as collected in this project's evaluation issue from each method's own release:
- SLAC: github alexlee-gk/slac `data/slac/` (five decoder-variance settings; the best per task, as its
  plotting notebook does), 10 seeds.
- DrQ: the DrQ paper's table 1 (Kostrikov, Yarats, Fergus 2020).
- DrQ-v2: github facebookresearch/drqv2 `curves/`.
- DreamerV3: github danijar/dreamerv3 scores (training-episode returns averaged over the 20k steps before
  each point).
Tasks without a figure (the gymnasium MuJoCo ones, cartpole for SLAC's paper) are simply absent.

Each figure was made at an action repeat of its own (ACTION_REPEAT), which the results table and the figure
state beside the run's: at one update per agent step, a smaller action repeat makes more agent steps and
updates in the same environment steps.
"""

from __future__ import annotations

CHECKPOINTS = (100_000, 500_000)
"""The environment steps every method reports (the PlaNet benchmark's two points)."""

PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "SLAC": {"cheetah_run": (413, 707), "walker_walk": (529, 952), "ball_in_cup_catch": (918, 967),
             "finger_spin": (951, 983), "cartpole_swingup": (328, 793)},
    "DrQ": {"cheetah_run": (344, 660), "walker_walk": (612, 921), "ball_in_cup_catch": (913, 963),
            "finger_spin": (901, 938), "cartpole_swingup": (759, 868)},
    "DrQ-v2": {"cheetah_run": (273, 603), "walker_walk": (170, 722), "ball_in_cup_catch": (359, 844),
               "finger_spin": (325, 789), "cartpole_swingup": (626, 846)},
    "DreamerV3": {"cheetah_run": (307, 662), "walker_walk": (586, 942), "ball_in_cup_catch": (862, 968),
                  "finger_spin": (493, 573), "cartpole_swingup": (550, 844)},
}

ACTION_REPEAT: dict[str, dict[str, int]] = {
    # The official result files' own `action_repeat` column (data/slac/dm_control_<task>_slac.csv, and the
    # `_ar<n>_` in the per-seed files' names). finger_spin ran at 1 there although the paper's table 1 says 2;
    # cartpole_swingup, not in table 1, ran at 4 (PlaNet's benchmark uses 8).
    "SLAC": {"cheetah_run": 4, "walker_walk": 2, "ball_in_cup_catch": 4, "finger_spin": 1, "cartpole_swingup": 4},
    # The PlaNet benchmark's action repeats, which the DrQ paper adopts (its appendix's hyperparameter table).
    "DrQ": {"cheetah_run": 4, "walker_walk": 2, "ball_in_cup_catch": 4, "finger_spin": 2, "cartpole_swingup": 8},
    # DrQ-v2 (its paper and facebookresearch/drqv2's config: action_repeat 2) and DreamerV3 (danijar/dreamerv3's
    # dmc configuration: repeat 2) use 2 on every task.
    "DrQ-v2": dict.fromkeys(PUBLISHED["DrQ-v2"], 2),
    "DreamerV3": dict.fromkeys(PUBLISHED["DreamerV3"], 2),
}
"""{method: {task: the action repeat its published figure was made with}}; a task absent where not known."""


def published_action_repeat(method: str, task: str) -> int | None:
    """The action repeat of `method`'s published figure on `task`, or None where it has none or it is not known."""
    return ACTION_REPEAT.get(method, {}).get(task)


def published(method: str, task: str) -> dict[int, float]:
    """{env steps: return} of `method` on `task`; empty when it has no figure for the task."""
    values = PUBLISHED.get(method, {}).get(task)
    return dict(zip(CHECKPOINTS, (float(v) for v in values), strict=True)) if values else {}
