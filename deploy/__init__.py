"""The composition root: the launcher behind `make train` and the cluster YAML. The only package that
knows the whole topology (Redis, Ray, learner, actors)."""
