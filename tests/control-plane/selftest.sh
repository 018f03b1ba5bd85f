#!/usr/bin/env bash
# Self-test of cp.sh itself (issue 2): idempotent `up`, `down` then `up`,
# nothing left behind after `down`, and a clear, fast error when the Go module
# proxy is unreachable; (issue 7) each daemon killed and started again on the
# same ports with its data, `up` starting again what was killed, and the audit
# log; (issue 10) Vault: up, health, KV v2 with the root token, Kubernetes auth
# with a real ServiceAccount token of the control plane, kill/start, down. Uses
# its own state directory, so a control plane that is already up for the e2e
# tests is not disturbed.
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

# 6. Vault (issue 10): dev server, KV v2, Kubernetes auth against this control plane.
# jget PATH: a field of the JSON on stdin (a.b.c).
jget() { python3 -c 'import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1].split("."): d = d[k]
print(d)' "$1"; }
# vreq METHOD PATH TOKEN [JSON]: a Vault HTTP request; prints the body, then the status.
vreq() {
    local data=()
    [[ -z "${4:-}" ]] || data=(-d "$4")
    curl -s --max-time 10 -X "$1" -H "X-Vault-Token: $3" "${data[@]}" -w '\n%{http_code}' "$VAULT_ADDR/v1/$2"
}
status_of() { tail -n 1 <<<"$1"; }
body_of() { sed '$d' <<<"$1"; }
t=$SECONDS
run "vault-up" bash "$CP" vault-up
ok "vault-up in $((SECONDS - t)) s"
out="$(bash "$CP" vault-up 2>&1)" || fail "second vault-up: $out"
grep -q "already up" <<<"$out" || fail "second vault-up started another Vault: $out"
ok "vault-up twice reuses the running Vault"
VAULT_ADDR="$(cat "$S/vault.addr")"
ROOT="$(cat "$S/vault.token")"
[[ "$VAULT_ADDR" =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || fail "vault.addr: $VAULT_ADDR"
health="$(curl -s --max-time 5 "$VAULT_ADDR/v1/sys/health")" || fail "no /v1/sys/health"
version="$(sed -n 's/^VAULT_VERSION=v//p' "$CP")"
[[ "$(jget initialized <<<"$health") $(jget sealed <<<"$health") $(jget version <<<"$health")" == "True False $version" ]] ||
    fail "health: $health"
ok "health: initialized, unsealed, version $version at $VAULT_ADDR"
run "kv put" bash "$CP" vault kv put -mount=secret selftest/root k=value-1
r="$(vreq GET secret/data/selftest/root "$ROOT")"
[[ "$(status_of "$r")" == 200 && "$(body_of "$r" | jget data.data.k)" == value-1 ]] || fail "KV v2 read: $r"
[[ "$(bash "$CP" vault kv get -mount=secret -field=k selftest/root)" == value-1 ]] || fail "vault kv get"
ok "KV v2 at secret/: a write and a read with the root token (CLI and HTTP)"

run "create a namespace" kubectl create namespace selftest-vault
run "create a ServiceAccount" kubectl -n selftest-vault create serviceaccount pusher
run "vault-k8s-auth" bash "$CP" vault-k8s-auth --prefix selftest/app --ttl 10m pusher selftest-vault
# login ROLE JWT: the client token, or the HTTP status on a refusal.
login() {
    local r; r="$(vreq POST auth/kubernetes/login "" "{\"role\":\"$1\",\"jwt\":\"$2\"}")"
    if [[ "$(status_of "$r")" == 200 ]]; then body_of "$r" | jget auth.client_token; else status_of "$r"; fi
}
jwt="$(kubectl -n selftest-vault create token pusher)"
tok="$(login push-to-k8s "$jwt")"
[[ "$tok" == hvs.* ]] || fail "Kubernetes login with the ServiceAccount's token: $tok"
r="$(vreq GET auth/token/lookup-self "$tok")"
[[ "$(body_of "$r" | jget data.meta.service_account_name)" == pusher ]] || fail "token metadata: $r"
[[ "$(body_of "$r" | jget data.ttl)" -le 600 ]] || fail "token TTL above --ttl 10m: $r"
ok "Kubernetes auth: a ServiceAccount token (kubectl create token) logs in, TokenReview by the apiserver"
[[ "$(status_of "$(vreq POST secret/data/selftest/app/one "$tok" '{"data":{"k":"v"}}')")" == 200 ]] || fail "write under the prefix"
r="$(vreq GET secret/data/selftest/app/one "$tok")"
[[ "$(body_of "$r" | jget data.data.k)" == v ]] || fail "read under the prefix: $r"
[[ "$(status_of "$(vreq GET secret/metadata/selftest/app/one "$tok")")" == 200 ]] || fail "metadata read"
[[ "$(status_of "$(vreq LIST secret/metadata/selftest/app "$tok")")" == 200 ]] || fail "metadata list"
[[ "$(status_of "$(vreq DELETE secret/metadata/selftest/app/one "$tok")")" == 204 ]] || fail "metadata delete"
[[ "$(status_of "$(vreq GET secret/data/selftest/app/one "$tok")")" == 404 ]] || fail "entry left after delete"
[[ "$(status_of "$(vreq POST secret/data/selftest/other "$tok" '{"data":{"k":"v"}}')")" == 403 ]] || fail "write outside the prefix allowed"
[[ "$(status_of "$(vreq GET secret/data/selftest/root "$tok")")" == 403 ]] || fail "read outside the prefix allowed"
ok "the role's token: write, read, metadata, list and delete under secret/selftest/app/, 403 outside"
[[ "$(login push-to-k8s "$(kubectl -n selftest-vault create token default)")" == 403 ]] || fail "another ServiceAccount logged in"
sig="${jwt##*.}"; c=A; [[ "${sig:10:1}" != A ]] || c=B
[[ "$(login push-to-k8s "${jwt%.*}.${sig:0:10}$c${sig:11}")" == 403 ]] || fail "a token with a bad signature logged in"
ok "another ServiceAccount and a forged token are refused"

addr_before="$VAULT_ADDR"
run "vault-kill" bash "$CP" vault-kill
! curl -s --max-time 2 "$VAULT_ADDR/v1/sys/health" >/dev/null || fail "Vault answers after vault-kill"
t=$SECONDS
run "vault-start" bash "$CP" vault-start
[[ "$(cat "$S/vault.addr")" == "$addr_before" ]] || fail "vault-start changed the address"
[[ "$(status_of "$(vreq GET auth/token/lookup-self "$ROOT")")" == 200 ]] || fail "root token after vault-start"
tok="$(login push-to-k8s "$jwt")"
[[ "$tok" == hvs.* ]] || fail "login after vault-start: $tok"
ok "vault-kill, vault-start: same address and root token, Kubernetes auth configured again, in $((SECONDS - t)) s"
run "kill Vault again" bash "$CP" vault-kill
run "vault-up starts a killed Vault" bash "$CP" vault-up
[[ "$(cat "$S/vault.addr")" == "$addr_before" ]] || fail "vault-up after a kill changed the address"
ok "vault-up starts a killed Vault again on its address"
vpid="$(cat "$S/vault.pid")"
run "vault-down" bash "$CP" vault-down
! alive "$vpid" || fail "Vault (pid $vpid) runs after vault-down"
[[ -z "$(ls "$S" | grep '^vault')" ]] || fail "Vault files left after vault-down: $(ls "$S" | grep '^vault')"
bash "$CP" status || fail "vault-down disturbed the control plane"
run "delete the namespace" kubectl delete namespace selftest-vault --wait=false
ok "vault-down stops Vault and removes its files; the control plane stays up"
run "vault-up for down" bash "$CP" vault-up
vpid="$(cat "$S/vault.pid")"

run "down" bash "$CP" down
[[ -z "$(ours)" ]] || fail "processes left after down: $(ours)"
! alive "$vpid" || fail "Vault runs after down"
[[ ! -d "$PUSH_TO_K8S_CP_DIR" ]] || fail "state left after down"
ok "down stops everything it started (Vault too) and removes its state"
# Vault up before the control plane: the control plane's fresh `up` leaves it running.
run "vault-up without a control plane" bash "$CP" vault-up
vpid="$(cat "$S/vault.pid")"
run "up after down" bash "$CP" up
run "kubectl after down+up" kubectl get namespace kube-system
alive "$vpid" && [[ "$(cat "$S/vault.pid")" == "$vpid" ]] || fail "up stopped a running Vault"
curl -sf --max-time 5 "$(cat "$S/vault.addr")/v1/sys/health" >/dev/null || fail "Vault unhealthy after up"
ok "up keeps a Vault started before it"
run "second down" bash "$CP" down
[[ -z "$(ours)" ]] || fail "processes left after second down: $(ours)"
ok "down then up works"
echo "cp selftest: $pass passed, 0 failed"
