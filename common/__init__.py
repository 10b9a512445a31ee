"""Shared vocabulary of slac-dist: config, tasks and envs, networks and the latent model, the policy
an actor runs, and the batch format. No processes, no Ray, no Redis."""
