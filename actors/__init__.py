"""Actor processes: the history window, the env loop (act, write steps, pull versioned weights) and
the evaluator. Imports `common` and `replay_service`; never `learner`."""
