"""`make train/logs/stop/status` on a Ray cluster: the driver as a Ray job (deploy/cluster/jobs.py).

    python -m deploy.jobs submit --preset paper --task hopper --actors 64 -- <extra deploy.train args>
    python -m deploy.jobs logs [JOB_ID]        # follows until the job ends
    python -m deploy.jobs stop [JOB_ID]        # SIGTERM: the driver checkpoints, then stops
    python -m deploy.jobs status [JOB_ID]      # the cluster's nodes by role, the job, its progress, W&B
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.tasks import TaskError
from deploy.cluster import jobs
from deploy.cluster.jobs import use_token


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.jobs", description=jobs.__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", help="submit the driver as a Ray job")
    s.add_argument("--preset", default="")
    s.add_argument("--task", default="")
    s.add_argument("--actors", default="")
    s.add_argument("extra", nargs="*", help="more deploy.train arguments (after --)")
    lg = sub.add_parser("logs", help="follow a job's logs")
    lg.add_argument("job_id", nargs="?", default="")
    lg.add_argument("--no-follow", action="store_true")
    st = sub.add_parser("stop", help="stop a job (it checkpoints first)")
    st.add_argument("job_id", nargs="?", default="")
    ss = sub.add_parser("status", help="the cluster's nodes, the job, its progress line and W&B run")
    ss.add_argument("job_id", nargs="?", default="")
    ss.add_argument("--nodes", action="store_true", help="only the nodes")
    args = parser.parse_args(argv)
    use_token()
    from ray.exceptions import RayError

    try:
        if args.command == "submit":
            jobs.submit(args.preset, args.task, args.actors, args.extra)
        elif args.command == "logs":
            final = jobs.logs(args.job_id, follow=not args.no_follow)
            return 0 if final in ("SUCCEEDED", "RUNNING", "PENDING") else 1
        elif args.command == "status":
            jobs.status(args.job_id, nodes_only=args.nodes)
        else:
            jobs.stop(args.job_id)
    except (jobs.JobError, TaskError, ConnectionError, RuntimeError, RayError) as exc:  # the SDK's HTTP errors are RuntimeErrors
        print(f"error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped following; the job goes on (`make stop` stops it)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
