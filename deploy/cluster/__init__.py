"""A Ray cluster from this machine: the driver submitted as a Ray job and followed, stopped and shown (jobs.py), and
Ray stopped on an on-premise cluster's workers before `ray down` (cluster_down.py). The YAMLs are deploy/cluster*.yaml.

May import common/ and replay_service/; nothing of deploy/run/ (the job runs `python -m deploy.train` there).
"""
