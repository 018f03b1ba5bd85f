#!/usr/bin/env bash
# Self-test of cp.sh itself (issue 2): idempotent `up`, `down` then `up`,
# nothing left behind after `down`, and a clear, fast error when the Go module
# proxy is unreachable; (issue 7) each daemon killed and started again on the
# same ports with its data, `up` starting again what was killed, and the audit
# log. Uses its own state directory, so a control plane that is already up for
# the e2e tests is not disturbed.
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

# 3. kill / start / restart each daemon: the same ports, the data kept, ready again.
S="$PUSH_TO_K8S_CP_DIR"
pid_of() { cat "$S/$1.pid"; }
alive() { [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$S/"; }
cmdline() { tr '\0' ' ' <"/proc/$1/cmdline"; }
run "create a namespace" kubectl create namespace selftest-kept
for name in etcd kube-apiserver kube-controller-manager; do
    old="$(pid_of "$name")"
    argv="$(cmdline "$old")"
    run "kill $name" bash "$CP" kill "$name"
    ! alive "$old" || fail "$name (pid $old) still runs after kill"
    ! bash "$CP" status || fail "status says ready with $name killed"
    t=$SECONDS
    run "start $name" bash "$CP" start "$name"
    new="$(pid_of "$name")"
    [[ "$new" != "$old" ]] && alive "$new" || fail "$name was not started again"
    bash "$CP" status || fail "not ready after starting $name again"
    run "the namespace survives killing $name" kubectl get namespace selftest-kept
    [[ "$(cmdline "$new")" == "$argv" ]] || fail "$name started with other arguments: $(cmdline "$new")"
    ok "kill $name, start it: same arguments and ports, data kept, ready again in $((SECONDS - t)) s"
done
old="$(pid_of kube-apiserver)"
run "restart kube-apiserver" bash "$CP" restart kube-apiserver
[[ "$(pid_of kube-apiserver)" != "$old" ]] || fail "restart did not start a new kube-apiserver"
bash "$CP" status || fail "not ready after restart"
ok "restart kube-apiserver"
# The restarted kube-controller-manager still deletes namespaces.
run "namespace deletion" kubectl delete namespace selftest-kept --timeout=60s
ok "a namespace deletion completes after the restarts"
out="$(bash "$CP" start 2>&1)" || fail "start with everything running: $out"
ok "start with everything running changes nothing"

# 4. `up` with a daemon killed starts it again and keeps the cluster's data.
run "create a namespace" kubectl create namespace selftest-up
run "kill etcd" bash "$CP" kill etcd
out="$(bash "$CP" up 2>&1)" || { printf '%s\n' "$out" >&2; fail "up with etcd killed"; }
grep -q "restarted stopped daemons" <<<"$out" || fail "up did not restart the killed daemon: $out"
run "the namespace survives up" kubectl get namespace selftest-up
ok "up starts a killed daemon again with its data"

# 5. The audit log records writes to Secrets (who, what), never a value.
run "create a Secret" kubectl -n default create secret generic selftest-audit --from-literal=k=audit-value-XYZ
run "delete a Secret" kubectl -n default delete secret selftest-audit
for _ in $(seq 1 50); do grep -q '"name":"selftest-audit"' "$S/audit.log" 2>/dev/null && break; sleep 0.1; done
grep '"name":"selftest-audit"' "$S/audit.log" | grep -q '"verb":"delete"' || fail "no audit entry for the Secret's deletion"
! grep -q "audit-value-XYZ\|YXVkaXQtdmFsdWUtWFla" "$S/audit.log" || fail "a Secret value reached the audit log"
ok "the audit log records Secret writes without values"

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
