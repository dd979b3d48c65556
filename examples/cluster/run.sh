#!/bin/sh
# Three Tidings nodes on one machine, sharing PostgreSQL and Redis, behind a
# round-robin proxy on :8080. Ctrl-C stops everything.
#
#   STORE=postgresql://postgres@127.0.0.1/tidings CLUSTER=redis://127.0.0.1:6379/0 \
#     sh examples/cluster/run.sh
#
# Browsers use ws://127.0.0.1:8080/ (dom.push.serverURL); application servers post to
# the endpoints, which all start with the proxy's origin http://127.0.0.1:8080.
set -eu
STORE=${STORE:-postgresql://postgres@127.0.0.1:5432/tidings}
CLUSTER=${CLUSTER:-redis://127.0.0.1:6379/0}
DATA=${DATA:-tidings-cluster}
PUBLIC=${PUBLIC:-http://127.0.0.1:8080}
TIDINGS=${TIDINGS:-tidings}
PYTHON=${PYTHON:-python3}

mkdir -p "$DATA"
# One token key file for every node, made once (never by nodes racing at start-up).
[ -f "$DATA/secrets.json" ] || "$TIDINGS" keys token --out "$DATA/secrets.json"

trap 'kill 0' INT TERM EXIT
for n in 1 2 3; do
  "$TIDINGS" serve --port 808$n --store "$STORE" --cluster "$CLUSTER" --node-id node$n \
    --secrets "$DATA/secrets.json" --public-url "$PUBLIC" --db "$DATA/unused-$n.db" &
done
"$PYTHON" "$(dirname "$0")/proxy.py" --listen 8080 127.0.0.1:8081 127.0.0.1:8082 127.0.0.1:8083 &
wait
