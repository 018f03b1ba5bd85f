#!/usr/bin/env bash
# The whole test suite, provisioning what it needs:
#   1. builds (once per machine, cached) and self-tests the local control plane,
#      and fetches Debian's prometheus package (unpacked into the cache, not installed),
#   2. starts it, runs formatting and lint checks and `cargo test` (unit tests,
#      the config table over the built binary, and every end-to-end test
#      against the real kube-apiserver + etcd + kube-controller-manager),
#   3. stops it (and the two remote control planes of the remote-cluster tests)
#      again, also when a step fails.
#   4. runs the chart's Pods on a real kubelet node (issue 18, tests/node/run-pods.sh:
#      a control plane of its own, containerd/runc/CNI from Debian packages, kubelet and
#      kube-scheduler built and cached like the rest; as root) and checks that the host's
#      network and kernel settings are as before (ip_forward 0).
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
bash "$CP" node-build
# Debian's prometheus package, unpacked into the cache (issue 20): the alert-rule,
# dashboard and scrape tests run the real promtool and Prometheus.
bash "$CP" prom-build
bash tests/control-plane/selftest.sh

step "control plane: up"
trap 'bash "$CP" down >/dev/null 2>&1; remotes_down >/dev/null 2>&1' EXIT
bash "$CP" up

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --test e2e_pods --quiet -- -D warnings

step "cargo test"
# Library, binary and integration tests (there are no doc tests to run); every
# test binary runs even after one fails, so one failure hides no other.
log="$(mktemp)"
status=0
cargo test --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?

step "control plane: down"
bash "$CP" down
remotes_down

bash tests/node/run-pods.sh 2>&1 | tee -a "$log" || status=$?

# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\nsuite: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
