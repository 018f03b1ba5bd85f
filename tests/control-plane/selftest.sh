#!/usr/bin/env bash
# Self-test of cp.sh itself (issue 2): idempotent `up`, `down` then `up`,
# nothing left behind after `down`, and a clear, fast error when the Go module
# proxy is unreachable. Uses its own state directory, so a control plane that
# is already up for the e2e tests is not disturbed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CP="$HERE/cp.sh"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/push-to-k8s-cp-selftest.XXXXXX")"
export PUSH_TO_K8S_CP_DIR="$WORK/cp"
fail() { echo "cp selftest: FAIL: $*" >&2; exit 1; }
cleanup() { bash "$CP" down >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
pass=0
ok() { echo "cp selftest: ok: $*"; pass=$((pass + 1)); }

ours() { pgrep -f -- "$PUSH_TO_K8S_CP_DIR/" || true; }
# run LABEL CMD...: run quietly; on failure show what it printed, then fail.
run() {
    local label="$1" out; shift
    out="$("$@" 2>&1)" && return 0
    printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /' >&2
    fail "$label"
}

# 1. The module proxy is unreachable: a clear error, quickly, not a hang.
start=$SECONDS
if out="$(XDG_CACHE_HOME="$WORK/cache" GOMODCACHE="$WORK/modcache" GOPROXY=http://127.0.0.1:9 \
    GOFLAGS=-mod=mod PUSH_TO_K8S_CP_DOWNLOAD_TIMEOUT=60 bash "$CP" build 2>&1)"; then
    fail "build succeeded with an unreachable module proxy"
fi
grep -q "could not download the Go modules" <<<"$out" || fail "unclear error: $out"
(( SECONDS - start < 90 )) || fail "took $((SECONDS - start)) s to fail"
ok "unreachable module proxy: clear error in $((SECONDS - start)) s"
chmod -R u+w "$WORK/modcache" 2>/dev/null || true  # Go makes its module cache read-only

# 2. up, up again (idempotent), down, up, down: nothing left behind.
run "first up" bash "$CP" up
eval "$(bash "$CP" env)"
run "kubectl after up" kubectl get namespace kube-system
out="$(bash "$CP" up 2>&1)" || fail "second up"
grep -q "already up" <<<"$out" || fail "second up restarted instead of reusing: $out"
ok "up twice reuses the running control plane"
run "down" bash "$CP" down
[[ -z "$(ours)" ]] || fail "processes left after down: $(ours)"
[[ ! -d "$PUSH_TO_K8S_CP_DIR" ]] || fail "state left after down"
ok "down stops everything it started and removes its state"
run "up after down" bash "$CP" up
run "kubectl after down+up" kubectl get namespace kube-system
run "second down" bash "$CP" down
[[ -z "$(ours)" ]] || fail "processes left after second down: $(ours)"
ok "down then up works"
echo "cp selftest: $pass passed, 0 failed"
