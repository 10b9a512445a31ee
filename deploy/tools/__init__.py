"""What users run on a finished run directory: `make eval` (evaluation.py), `make export` (export.py), the replay
audit (audit.py), a checkpoint's policy (trained.py), W&B's offline files read back (wandb_reader.py), and
`make tasks` (tasks.py).

May import common/, learner/, actors/, replay_service/ and deploy/run/ (file names, the logger's GIFs); not
experiments/ or cluster/.
"""
