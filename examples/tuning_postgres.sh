#!/usr/bin/env bash
# A tuning study shared by several workers through a real PostgreSQL server (not part of CI).
#
# It starts a throw-away PostgreSQL cluster in a temporary directory (as the `postgres` user when run
# as root), then: worker C starts and is killed with SIGKILL mid-trial; workers A and B run together
# until the study has N_TRIALS finished trials, marking C's trial FAIL (heartbeat) and re-running it.
# Last, it lists the study's trials. Tiny budgets: the point is the storage, not the welfare.
#
# Needs: Debian's PostgreSQL (apt-get install -y postgresql) and psycopg2 in the venv
# (.venv/bin/pip install -e '.[postgres]', i.e. psycopg2-binary).
#
#   bash examples/tuning_postgres.sh 2>&1 | tee benchmarks/results/tuning_postgres.txt
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
PORT=${PORT:-54329}
N_TRIALS=${N_TRIALS:-6}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

PGDATA=$(mktemp -d /tmp/sb3_rmdp_pg.XXXXXX)
as_db_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    as_db_owner "$PGBIN/pg_ctl" -D "$PGDATA/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA"

echo "== PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') cluster in $PGDATA, port $PORT"
as_db_owner "$PGBIN/initdb" -D "$PGDATA/data" -U tuner -A trust >/dev/null
as_db_owner "$PGBIN/pg_ctl" -D "$PGDATA/data" -o "-p $PORT -k $PGDATA -c listen_addresses=localhost" \
    -l "$PGDATA/server.log" -w start >/dev/null
as_db_owner "$PGBIN/createdb" -h localhost -p "$PORT" -U tuner tuning
URL="postgresql+psycopg2://tuner@localhost:$PORT/tuning"  # SQLAlchemy 2.1: postgresql:// is psycopg 3
echo "== storage: $URL"

worker() {
    exec "$PY" -m sb3_rmdp.tuning --env sb3_rmdp/ResourceGathering-v0 -k 2 --n-trials "$N_TRIALS" \
        --n-timesteps 8192 --n-evaluations 2 --n-eval-episodes 1 --n-startup-trials 2 --device cpu \
        --env-kwargs reward_scale=0.01 --storage "$URL" --study-name rg-k2-em \
        --heartbeat-interval 2 --grace-period 6 "$@"
}

echo "== worker C: started, killed with SIGKILL once its first trial runs"
worker > "$PGDATA/c.log" 2>&1 &
C=$!
# Wait until C's trial is mid-training: it has reported its first evaluation.
"$PY" - "$URL" <<'EOF'
import sys
import time

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = optuna.storages.RDBStorage(sys.argv[1])
while True:
    time.sleep(0.5)
    try:
        trials = optuna.load_study(study_name="rg-k2-em", storage=storage).trials
    except KeyError:
        continue
    if any(t.state.name == "RUNNING" and t.intermediate_values for t in trials):
        break
EOF
kill -9 "$C" 2>/dev/null || echo "worker C had exited already"
wait "$C" 2>/dev/null || true
sed 's/^/[C] /' "$PGDATA/c.log"
"$PY" - "$URL" <<'EOF'
import sys

import optuna

study = optuna.load_study(study_name="rg-k2-em", storage=sys.argv[1])
print("== after the kill:", [(t.number, t.state.name, t.intermediate_values) for t in study.trials])
EOF

echo "== workers A and B, together, until the study has $N_TRIALS finished trials"
start=$(date +%s)
worker --out "$PGDATA/best.json" > "$PGDATA/a.log" 2>&1 &
A=$!
worker > "$PGDATA/b.log" 2>&1 &
B=$!
wait "$A" "$B"
echo "== both finished in $(( $(date +%s) - start )) s"
sed 's/^/[A] /' "$PGDATA/a.log"
sed 's/^/[B] /' "$PGDATA/b.log"

"$PY" - "$URL" "$N_TRIALS" <<'EOF'
import sys

import optuna
from optuna.trial import TrialState

study = optuna.load_study(study_name="rg-k2-em", storage=sys.argv[1])
print("== the study's trials")
for t in study.trials:
    retry = t.system_attrs.get("failed_trial")
    note = f"retry of trial {retry}" if retry is not None else ("surplus" if t.user_attrs.get("surplus") else "")
    values = {step: round(value, 3) for step, value in t.intermediate_values.items()}
    print(f"  trial {t.number}: {t.state.name:8s} value={t.value} intermediate={values} {note}")
finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
numbers = [t.number for t in study.trials]
print(f"== {len(finished)} finished trials (wanted {sys.argv[2]}); numbers distinct: {len(set(numbers)) == len(numbers)}")
EOF
echo "== best.json"
cat "$PGDATA/best.json"
