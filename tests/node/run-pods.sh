#!/usr/bin/env bash
# The Pod tests of issue 18, as tests/run.sh runs them (also runnable alone, as root):
# a control plane of its own + `cp.sh node-up`, `cargo test --test e2e_pods`, then
# `node-down` + `down`, and the host's network and kernel settings compared with what they
# were before (tests/node/host-snapshot.sh); ip_forward must be 0. Arguments go to the
# test binary's filter. Fails loudly when the node cannot start.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CP=tests/control-plane/cp.sh
export PUSH_TO_K8S_CP_DIR="${TMPDIR:-/tmp}/push-to-k8s-cp-node-$(id -u)"
node_down() { bash "$CP" node-down; bash "$CP" down; }
trap 'node_down >/dev/null 2>&1' EXIT
step() { echo; echo "==> $*"; }

step "Pods on a real node: node up (first run on a machine: kubelet build, Debian packages)"
host_before="$(bash tests/node/host-snapshot.sh)"
bash "$CP" up
bash "$CP" node-up

step "cargo test --test e2e_pods (the chart's Pods)"
status=0
cargo test --test e2e_pods "$@" -- --test-threads 1 || status=$?

step "node down; the host's settings as before"
node_down
trap - EXIT
host_after="$(bash tests/node/host-snapshot.sh)"
if [[ "$host_before" != "$host_after" ]]; then
    echo "the host's network or kernel settings changed across the node's run:" >&2
    diff <(echo "$host_before") <(echo "$host_after") >&2 || true
    status=1
fi
if [[ "$(sysctl -n net.ipv4.ip_forward)" != 0 ]]; then
    echo "net.ipv4.ip_forward is not 0 after the run" >&2
    status=1
fi
[[ $status == 0 ]] && echo "node: host settings as before, ip_forward 0"
exit "$status"
