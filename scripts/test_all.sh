#!/usr/bin/env bash
# `make test` with no MARK: every tier, the learning run beside the tiers that mostly wait.
#
# The `learning` tier is one long training whose learner takes one core (on 2 cores `learner.cpus: auto` is one
# thread) and leaves the other mostly idle: its actor and evaluator need about a tenth of it. So the unit and
# integration tiers run beside it at niceness 19, below its learner and level with its actor; the end-to-end,
# fault and cluster tiers run after it, alone (the cluster tier starts Ray clusters of its own and refuses to run
# beside another Ray: the dashboard agent's port, a raylet it would take for its own). Each pytest prints its own
# slowest durations; the exit code is nonzero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
log="$(mktemp -t slac-learning-XXXXXX.log)"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider -m learning > "$log" 2>&1 &
learning=$!
nice -n 19 "$PY" -m pytest -q -p no:cacheprovider -m "unit or integration"
beside=$?
wait "$learning"
learned=$?
echo "== the learning tier (beside the above):"
cat "$log"
rm -f "$log"
echo "== the first two sessions took $(( $(date +%s) - start )) s"
"$PY" -m pytest -q -p no:cacheprovider -m "e2e or faults or cluster"
after=$?
echo "== make test: $(( $(date +%s) - start )) s in all (unit and integration beside learning: rc $beside;" \
     "learning: rc $learned; e2e, faults and cluster: rc $after)"
exit $(( beside != 0 || learned != 0 || after != 0 ))
