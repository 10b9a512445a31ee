#!/usr/bin/env bash
# `make test` with no MARK: every tier, the learning run beside the tiers that mostly wait.
#
# The `learning` tier is one long training whose learner takes one core (on 2 cores `learner.cpus: auto` is one
# thread) and leaves the other mostly idle: its actor and evaluator need about a tenth of it. So the tiers that
# mostly wait on start-ups, timers and SSH (cluster: the autoscaler's, `ray up`'s; unit and integration) run
# beside it at niceness 19, below its learner and level with its actor; the CPU-bound end-to-end and fault tiers
# run after it, alone. Each pytest prints its own slowest durations; the exit code is nonzero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
log="$(mktemp -t slac-learning-XXXXXX.log)"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider -m learning > "$log" 2>&1 &
learning=$!
nice -n 19 "$PY" -m pytest -q -p no:cacheprovider -m "not learning and not e2e and not faults"
beside=$?
wait "$learning"
learned=$?
echo "== the learning tier (beside the above):"
cat "$log"
rm -f "$log"
echo "== the first two sessions took $(( $(date +%s) - start )) s"
"$PY" -m pytest -q -p no:cacheprovider -m "e2e or faults"
after=$?
echo "== make test: $(( $(date +%s) - start )) s in all (unit, integration and cluster beside learning: rc $beside;" \
     "learning: rc $learned; e2e and faults: rc $after)"
exit $(( beside != 0 || learned != 0 || after != 0 ))
