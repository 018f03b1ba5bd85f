#!/bin/bash
# RSS of two controller builds side by side over the same 500 copies in sync
# (5 sources x 100 namespaces), with SYNC_INTERVAL=1 (a resync a minute),
# sampled every 30 s with their resync and write counters (docs/benchmarks.md,
# "Restructure (issue 17): before/after"). BEFORE creates the copies, AFTER
# starts over them. A control plane of its own, taken down at the end.
#
#   BEFORE=path/to/old/push-to-k8s AFTER=target/release/push-to-k8s MINUTES=10 \
#     bash benches/rss_resync.sh
#
# CONTROLLER_ENV="NAME=value ..." adds variables to both controllers' environment
# (e.g. MALLOC_ARENA_MAX=1).
set -euo pipefail
MINUTES=${MINUTES:-10}
: "${BEFORE:?the first build (creates the copies)}" "${AFTER:?the second build}"
BEFORE=$(realpath "$BEFORE"); AFTER=$(realpath "$AFTER")
export PUSH_TO_K8S_CP_DIR=${TMPDIR:-/tmp}/push-to-k8s-bench-cp-$(id -u)-rss
CP=$(dirname "$(realpath "$0")")/../tests/control-plane/cp.sh
OUT=${OUT:-target/bench/rss_resync}
mkdir -p $OUT
bash $CP up
export KUBECONFIG=$PUSH_TO_K8S_CP_DIR/admin.kubeconfig
trap 'kill $PB $PA 2>/dev/null; wait $PB $PA 2>/dev/null; bash $CP down >/dev/null 2>&1 || true' EXIT
kubectl create ns bench-src >/dev/null
for i in $(seq -w 0 99); do echo "apiVersion: v1
kind: Namespace
metadata: {name: bench-t00$i}
---"; done | kubectl apply -f - >/dev/null
for s in 0 1 2 3 4; do
  kubectl -n bench-src create secret generic src-$s --from-literal=username=svc-$s \
    --from-literal=password=$(head -c 24 /dev/urandom | base64) \
    --from-literal=ca.crt=$(head -c 768 /dev/urandom | base64 -w0) >/dev/null
  kubectl -n bench-src label secret src-$s push-to-k8s=source >/dev/null
done
start() { # name bin port
  env -i PATH=$PATH HOME=/tmp KUBECONFIG=$KUBECONFIG METRICS_PORT=$3 NAMESPACE=bench-src \
    SECRET_SYNC_DEBOUNCE_SECONDS=1 SECRET_SYNC_RATE_LIMIT=100 SECRET_SYNC_RATE_BURST=1 SYNC_INTERVAL=1 \
    PROTECTED_NAMESPACES=kube-system,kube-public,kube-node-lease,default ${CONTROLLER_ENV:-} \
    "$2" > $OUT/$1.log 2>&1 &
}
count() { kubectl get secrets -A -l push-to-k8s.io/managed-by=push-to-k8s --no-headers 2>/dev/null | wc -l; }
start before "$BEFORE" 19101; PB=$!
until [ "$(count)" -ge 500 ]; do sleep 1; done
sleep 5
start after "$AFTER" 19102; PA=$!
sleep 10
rss() { awk '/VmRSS/{printf "%.1f", $2/1024}' /proc/$1/status; }
hwm() { awk '/VmHWM/{printf "%.1f", $2/1024}' /proc/$1/status; }
res() { curl -s localhost:$1/metrics | awk '/^push_to_k8s_resyncs_total/{s+=$2} END{print s+0}'; }
wr() { curl -s localhost:$1/metrics | awk '/^push_to_k8s_writes_total/{s+=$2} END{print s+0}'; }
echo "t_s before_rss before_hwm before_resyncs before_writes after_rss after_hwm after_resyncs after_writes" | tee $OUT/samples.txt
T0=$(date +%s)
while [ $(( $(date +%s) - T0 )) -lt $((MINUTES*60)) ]; do
  echo "$(( $(date +%s) - T0 )) $(rss $PB) $(hwm $PB) $(res 19101) $(wr 19101) $(rss $PA) $(hwm $PA) $(res 19102) $(wr 19102)" | tee -a $OUT/samples.txt
  sleep 30
done
