"""The learner: SLAC's losses (one per paper equation), the `Learner` that owns networks and
optimisers, checkpoints, and the learner process loop. Imports `common` and `replay_service` only."""
