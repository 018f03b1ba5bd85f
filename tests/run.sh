#!/usr/bin/env bash
# The whole test suite, provisioning what it needs:
#   1. builds (once per machine, cached) and self-tests the local control plane,
#   2. starts it, runs formatting and lint checks and `cargo test` (unit tests,
#      the config table over the built binary, and every end-to-end test
#      against the real kube-apiserver + etcd + kube-controller-manager),
#   3. stops it (and the two remote control planes of the remote-cluster tests)
#      again, also when a step fails.
#   4. (issue 18) builds kubelet + kube-scheduler (cached), installs containerd/runc/CNI
#      from Debian packages, joins a node to a control plane of its own, runs the chart's
#      Pods (tests/e2e_pods.rs), takes it all down and checks that the host's network
#      and kernel settings are as they were (ip_forward 0). Needs root.
# If the control plane or the node cannot be built or started this fails loudly; no test
# is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CP=tests/control-plane/cp.sh

step() { echo; echo "==> $*"; }

# The two remote control planes the remote-cluster tests start (tests/common/remote.rs).
remotes_down() {
    local n
    for n in 1 2; do
        PUSH_TO_K8S_CP_DIR="${TMPDIR:-/tmp}/push-to-k8s-cp-remote-$n-$(id -u)" bash "$CP" down
    done
}

step "control plane: build (first run on a machine: 10-20 minutes) and self-test"
bash "$CP" build
bash tests/control-plane/selftest.sh

# The node's own control plane (tests/e2e_pods.rs uses the same directory).
NODE_CP="${TMPDIR:-/tmp}/push-to-k8s-cp-node-$(id -u)"
node_down() {
    PUSH_TO_K8S_CP_DIR="$NODE_CP" bash "$CP" node-down
    PUSH_TO_K8S_CP_DIR="$NODE_CP" bash "$CP" down
}

step "control plane: up"
trap 'bash "$CP" down >/dev/null 2>&1; remotes_down >/dev/null 2>&1; node_down >/dev/null 2>&1' EXIT
bash "$CP" up

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --test e2e_pods --quiet -- -D warnings

step "cargo test"
# Library, binary and integration tests (there are no doc tests to run).
log="$(mktemp)"
status=0
cargo test --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?

step "control plane: down"
bash "$CP" down
remotes_down

step "Pods on a real node (issue 18): node up (first run on a machine: kubelet build, packages)"
host_before="$(bash tests/node/host-snapshot.sh)"
PUSH_TO_K8S_CP_DIR="$NODE_CP" bash "$CP" up
PUSH_TO_K8S_CP_DIR="$NODE_CP" bash "$CP" node-up

step "cargo test --test e2e_pods (the chart's Pods)"
PUSH_TO_K8S_CP_DIR="$NODE_CP" cargo test --test e2e_pods "$@" -- --test-threads 1 2>&1 | tee -a "$log" || status=$?

step "node down; the host's settings as before"
node_down
host_after="$(bash tests/node/host-snapshot.sh)"
if [[ "$host_before" != "$host_after" ]]; then
    echo "the host's network or kernel settings changed across the node's run:" >&2
    diff <(echo "$host_before") <(echo "$host_after") >&2 || true
    status=1
fi
[[ "$(sysctl -n net.ipv4.ip_forward)" == 0 ]] || { echo "net.ipv4.ip_forward is not 0" >&2; status=1; }

# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\nsuite: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
