#!/usr/bin/env bash
# A real, local Kubernetes control plane for tests, benchmarks and the demo:
# etcd + kube-apiserver + kube-controller-manager on loopback, built from the Go
# module proxy once and cached outside the repository.
#
#   cp.sh build   build (or reuse) the cached binaries
#   cp.sh up      start the control plane (idempotent) and wait for /readyz
#   cp.sh env     print `export KUBECONFIG=...`
#   cp.sh status  exit 0 when it is up and ready
#   cp.sh down    stop exactly the processes `up` started and remove the state
#   cp.sh kill NAME...     SIGKILL one daemon (etcd, kube-apiserver, kube-controller-manager)
#   cp.sh start [NAME...]  start a stopped daemon again with the command line it had at
#                          `up` (same ports, same data); no NAME: every stopped one. Waits
#                          until it is ready (etcd /health, kube-apiserver /readyz)
#   cp.sh restart NAME...  kill, then start
#   cp.sh helm ARGS...  run helm (built the same way, cached by its own version)
#                       against the chart under helm/; used by the chart's tests
#
# Environment:
#   PUSH_TO_K8S_CP_DIR   state directory (default: ${TMPDIR:-/tmp}/push-to-k8s-cp-$UID)
#   XDG_CACHE_HOME       cache root (binaries go to .../push-to-k8s/control-plane/<version>/)
#
# kube-apiserver writes an audit log of writes to Secrets, ConfigMaps and
# Leases (metadata level: who, what, when; never a value) to $STATE/audit.log.
set -euo pipefail

KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.8
HELM_VERSION=v3.22.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s/control-plane/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
BIN="$CACHE/bin"
HELM_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s/helm-${HELM_VERSION}"
STATE="${PUSH_TO_K8S_CP_DIR:-${TMPDIR:-/tmp}/push-to-k8s-cp-$(id -u)}"
# Downloads that take longer than this are treated as "the module proxy is unreachable".
DOWNLOAD_TIMEOUT="${PUSH_TO_K8S_CP_DOWNLOAD_TIMEOUT:-900}"
READY_TIMEOUT="${PUSH_TO_K8S_CP_READY_TIMEOUT:-120}"

say() { echo "control-plane: $*" >&2; }
die() { echo "control-plane: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- build

# go_build LOGS DIR OUT PKG... : download modules (bounded in time), then compile
# with progress; logs go to the directory LOGS.
go_build() {
    local logs="$1" dir="$2" out="$3"; shift 3
    command -v go >/dev/null || die "Go is required to build the control plane (https://go.dev/doc/install); 'go' is not on PATH"
    say "downloading Go modules for $(basename "$dir") (timeout ${DOWNLOAD_TIMEOUT}s)"
    if ! (cd "$dir" && timeout "$DOWNLOAD_TIMEOUT" go mod download 2>"$logs/download.log"); then
        sed 's/^/    /' "$logs/download.log" | tail -n 15 >&2
        die "could not download the Go modules for $(basename "$dir"): is the Go module proxy (GOPROXY=$(go env GOPROXY)) reachable? Full log: $logs/download.log"
    fi
    local ldflags="-s -w"
    if [[ "$(basename "$dir")" == kubernetes ]]; then
        local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
        local p=k8s.io/component-base/version
        ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    elif [[ "$(basename "$dir")" == helm ]]; then
        ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    fi
    say "compiling $* (slow the first time on a machine: minutes; progress every 100 packages)"
    local log="$logs/build-$(basename "$dir").log"
    set +e
    (cd "$dir" && go build -v -ldflags "$ldflags" -o "$out/" "$@") 2>&1 | tee "$log" |
        awk '{ n++ } n % 100 == 0 { printf "control-plane:   ... %d packages compiled\n", n > "/dev/stderr" }'
    local rc="${PIPESTATUS[0]}"
    set -e
    if [[ "$rc" != 0 ]]; then
        grep -v '^[a-zA-Z0-9._/-]*$' "$log" | tail -n 20 | sed 's/^/    /' >&2
        die "building $* failed (exit $rc); full log: $log"
    fi
}

cmd_build() {
    if [[ -x "$BIN/etcd" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
        return 0
    fi
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.build.lock"
    flock 8
    if [[ -x "$BIN/etcd" && -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" ]]; then
        return 0
    fi
    say "building Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION into $CACHE (once per machine)"
    local tmp="$CACHE/bin.partial"
    rm -rf "$tmp"; mkdir -p "$tmp"
    go_build "$CACHE" "$HERE/etcd" "$tmp" go.etcd.io/etcd/server/v3
    mv "$tmp/v3" "$tmp/etcd" 2>/dev/null || mv "$tmp/server" "$tmp/etcd" 2>/dev/null || true
    [[ -x "$tmp/etcd" ]] || die "etcd build produced no binary in $tmp"
    go_build "$CACHE" "$HERE/kubernetes" "$tmp" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
    rm -rf "$BIN"; mv "$tmp" "$BIN"
    say "built: $(ls "$BIN" | tr '\n' ' ')"
}

cmd_build_helm() {
    [[ -x "$HELM_CACHE/bin/helm" ]] && return 0
    mkdir -p "$HELM_CACHE"
    exec 8>"$HELM_CACHE/.build.lock"
    flock 8
    [[ -x "$HELM_CACHE/bin/helm" ]] && return 0
    local tmp="$HELM_CACHE/bin.partial"
    say "building helm $HELM_VERSION into $HELM_CACHE (once per machine)"
    rm -rf "$tmp"; mkdir -p "$tmp"
    go_build "$HELM_CACHE" "$HERE/helm" "$tmp" helm.sh/helm/v3/cmd/helm
    [[ -x "$tmp/helm" ]] || die "helm build produced no binary in $tmp"
    rm -rf "$HELM_CACHE/bin"; mv "$tmp" "$HELM_CACHE/bin"
}

# ---------------------------------------------------------------- up / down

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' \
        2>/dev/null && return 0
    # Without python3: a random port below the ephemeral range that nothing answers on.
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    die "found no free loopback port"
}

# A process is ours only if it is alive and its command line names our state dir.
is_ours() {
    local pidfile="$1" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$STATE/"
}

ready() {
    [[ -f "$STATE/admin.kubeconfig" ]] || return 1
    is_ours "$STATE/etcd.pid" && is_ours "$STATE/kube-apiserver.pid" && is_ours "$STATE/kube-controller-manager.pid" || return 1
    local port; port="$(cat "$STATE/apiserver.port")"
    [[ "$(curl -s --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" \
        "https://127.0.0.1:$port/readyz" 2>/dev/null)" == ok ]]
}

make_pki() {
    local d="$STATE/pki"
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=push-to-k8s-test-ca" \
        -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    # name CN O [SAN]
    issue() {
        local name="$1" subj="$2" san="${3:-}"
        openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
        if [[ -n "$san" ]]; then
            printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >"$d/$name.ext"
        else
            printf 'extendedKeyUsage=clientAuth\n' >"$d/$name.ext"
        fi
        openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
            -days 30 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
    }
    issue apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
    issue admin "/O=system:masters/CN=admin"
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

write_kubeconfig() {
    local port="$1" out="$2"
    cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $STATE/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $STATE/pki/admin.crt
    client-key: $STATE/pki/admin.key
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
EOF
}

DAEMONS=(etcd kube-apiserver kube-controller-manager)

start() {
    local name="$1"; shift
    # The exact command line, so `cp.sh start NAME` can replay it (NUL-separated).
    printf '%s\0' "$@" >"$STATE/$name.cmd"
    # Close the lock descriptors: a daemon holding them would block every later `up`.
    # The log is appended to: a restarted daemon keeps its earlier log.
    setsid "$@" >>"$STATE/$name.log" 2>&1 </dev/null 8>&- 9>&- &
    local pid=$!
    echo "$pid" >"$STATE/$name.pid"
    # Until the forked shell has exec'd the daemon, its command line is this
    # script's and `is_ours` would call it gone. Wait for the exec (or an exit).
    for _ in $(seq 1 200); do
        is_ours "$STATE/$name.pid" && return 0
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
}

cmd_down() {
    [[ -d "$STATE" ]] || return 0
    local name pid
    for name in kube-controller-manager kube-apiserver etcd; do
        if is_ours "$STATE/$name.pid"; then
            pid="$(cat "$STATE/$name.pid")"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$STATE"
}

cmd_up() {
    mkdir -p "$(dirname "$STATE")"
    exec 9>"$STATE.lock"
    flock 9
    if ready; then
        say "already up: $STATE/admin.kubeconfig"
        return 0
    fi
    cmd_build
    # A daemon was killed (`cp.sh kill`, a test that died half-way): start what
    # is missing with its recorded command line, keeping the cluster's data.
    if [[ -f "$STATE/admin.kubeconfig" ]] && resume_all; then
        say "up (restarted stopped daemons): export KUBECONFIG=$STATE/admin.kubeconfig"
        return 0
    fi
    local attempt
    for attempt in 1 2; do
        cmd_down
        mkdir -p "$STATE"
        make_pki
        if launch; then
            say "up: export KUBECONFIG=$STATE/admin.kubeconfig (logs in $STATE)"
            return 0
        fi
        [[ $attempt == 1 ]] || die "the control plane did not start, twice; logs in $STATE"
        say "starting once more, on new ports"
    done
}

# Audit writes (never reads) to Secrets, ConfigMaps and Leases at metadata
# level: enough to tell which client wrote what, without any value, and cheap.
write_audit_policy() {
    cat >"$1" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
  resources:
  - group: ""
    resources: ["secrets", "configmaps"]
  - group: "coordination.k8s.io"
    resources: ["leases"]
- level: None
EOF
}

# ---------------------------------------------------------------- kill / start

known_daemon() {
    local d
    for d in "${DAEMONS[@]}"; do [[ "$1" == "$d" ]] && return 0; done
    die "unknown daemon '$1' (one of: ${DAEMONS[*]})"
}

api_ready() {
    [[ "$(curl -s --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" \
        "https://127.0.0.1:$(cat "$STATE/apiserver.port")/readyz" 2>/dev/null)" == ok ]]
}

etcd_healthy() {
    curl -s --max-time 5 "http://127.0.0.1:$(cat "$STATE/etcd.port")/health" 2>/dev/null | grep -q '"health":"true"'
}

# SIGKILL daemon NAME (no grace: a crash, not a shutdown) and wait until it is gone.
kill_daemon() {
    local name="$1" pid
    if ! is_ours "$STATE/$name.pid"; then
        say "$name is not running"
        return 0
    fi
    pid="$(cat "$STATE/$name.pid")"
    kill -KILL "$pid" 2>/dev/null || true
    # Gone, or a zombie nobody has reaped yet (no command line): either way dead.
    for _ in $(seq 1 200); do is_ours "$STATE/$name.pid" || break; sleep 0.05; done
    ! is_ours "$STATE/$name.pid" || die "$name (pid $pid) survived SIGKILL"
    say "killed $name (pid $pid)"
}

# Start NAME again with its recorded command line unless it runs, and wait until
# it (and the kube-apiserver, when that runs) is ready. Returns 1 on failure.
resume() {
    local name="$1" argv=()
    [[ -f "$STATE/$name.cmd" ]] || { say "no recorded command line for $name (is the control plane up?)"; return 1; }
    if ! is_ours "$STATE/$name.pid"; then
        mapfile -d '' -t argv <"$STATE/$name.cmd"
        echo "---- $(date -u +%FT%TZ) cp.sh: started again" >>"$STATE/$name.log"
        start "$name" "${argv[@]}"
        say "started $name again (pid $(cat "$STATE/$name.pid"))"
    fi
    local deadline=$((SECONDS + READY_TIMEOUT))
    while :; do
        if ! is_ours "$STATE/$name.pid"; then
            tail -n 20 "$STATE/$name.log" | sed 's/^/    /' >&2
            say "$name exited while starting; log: $STATE/$name.log"
            return 1
        fi
        if [[ "$name" != etcd ]] || etcd_healthy; then
            if ! is_ours "$STATE/kube-apiserver.pid" || api_ready; then
                return 0
            fi
        fi
        if (( SECONDS > deadline )); then
            say "$name: not ready within ${READY_TIMEOUT}s; logs in $STATE"
            return 1
        fi
        sleep 0.2
    done
}

# Start every daemon that is not running, in dependency order; 0 once ready.
resume_all() {
    local name
    for name in "${DAEMONS[@]}"; do resume "$name" || return 1; done
    ready
}

# Start etcd, kube-apiserver and kube-controller-manager and wait until ready.
# Returns 1 if a daemon exits during start (a port taken meanwhile, say).
launch() {
    local etcd_port peer_port api_port name
    etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
    echo "$api_port" >"$STATE/apiserver.port"
    echo "$etcd_port" >"$STATE/etcd.port"
    write_audit_policy "$STATE/audit-policy.yaml"
    start etcd "$BIN/etcd" --name default --data-dir "$STATE/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync --log-level warn
    start kube-apiserver "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
        --cert-dir "$STATE/apiserver-certs" \
        --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
        --client-ca-file "$STATE/pki/ca.crt" \
        --authorization-mode RBAC \
        --service-account-issuer https://kubernetes.default.svc.cluster.local \
        --service-account-key-file "$STATE/pki/sa.pub" \
        --service-account-signing-key-file "$STATE/pki/sa.key" \
        --service-cluster-ip-range 10.0.0.0/24 \
        --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
        --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$STATE/audit.log" \
        --audit-log-maxsize 200 --audit-log-maxbackup 1
    write_kubeconfig "$api_port" "$STATE/admin.kubeconfig"
    say "waiting for kube-apiserver on 127.0.0.1:$api_port to be ready (up to ${READY_TIMEOUT}s)"
    local deadline=$((SECONDS + READY_TIMEOUT)) started_kcm=0
    while :; do
        for name in etcd kube-apiserver; do
            if ! is_ours "$STATE/$name.pid"; then
                tail -n 20 "$STATE/$name.log" | sed 's/^/    /' >&2
                say "$name exited during start; log: $STATE/$name.log"
                return 1
            fi
        done
        if [[ $started_kcm == 0 ]] && curl -s --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" \
            --key "$STATE/pki/admin.key" "https://127.0.0.1:$api_port/healthz" 2>/dev/null | grep -q ok; then
            start kube-controller-manager "$BIN/kube-controller-manager" \
                --kubeconfig "$STATE/admin.kubeconfig" \
                --authentication-kubeconfig "$STATE/admin.kubeconfig" --authorization-kubeconfig "$STATE/admin.kubeconfig" \
                --controllers namespace-controller,garbage-collector-controller,serviceaccount-controller \
                --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
                --root-ca-file "$STATE/pki/ca.crt" --service-account-private-key-file "$STATE/pki/sa.key"
            started_kcm=1
        fi
        if [[ $started_kcm == 1 ]] && ready; then break; fi
        if (( SECONDS > deadline )); then
            tail -n 20 "$STATE/kube-apiserver.log" | sed 's/^/    /' >&2
            die "kube-apiserver did not become ready within ${READY_TIMEOUT}s; logs in $STATE"
        fi
        sleep 0.5
    done
}

case "${1:-}" in
    build) cmd_build; cmd_build_helm ;;
    helm)
        cmd_build_helm
        shift
        # helm keeps caches and config under HOME; keep them out of the user's.
        export HELM_CACHE_HOME="$HELM_CACHE/home/cache" HELM_CONFIG_HOME="$HELM_CACHE/home/config" \
            HELM_DATA_HOME="$HELM_CACHE/home/data"
        exec "$HELM_CACHE/bin/helm" "$@" ;;
    up) cmd_up ;;
    down)
        mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"; flock 9
        cmd_down; say "down" ;;
    env) echo "export KUBECONFIG=$STATE/admin.kubeconfig" ;;
    status) ready ;;
    kill|start|restart)
        op="$1"; shift
        for name in "$@"; do known_daemon "$name"; done
        [[ $# -gt 0 || $op == start ]] || die "usage: $0 $op NAME... (${DAEMONS[*]})"
        mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"; flock 9
        [[ -f "$STATE/admin.kubeconfig" ]] || die "the control plane in $STATE is not up"
        if [[ $op != start ]]; then
            for name in "$@"; do kill_daemon "$name"; done
        fi
        if [[ $op != kill ]]; then
            # Dependency order, whatever order the names came in.
            for name in "${DAEMONS[@]}"; do
                if [[ $# == 0 || " $* " == *" $name "* ]]; then
                    resume "$name" || die "could not start $name again; logs in $STATE"
                fi
            done
            say "ready"
        fi ;;
    *) echo "usage: $0 build|up|down|env|status|kill NAME...|start [NAME...]|restart NAME...|helm ARGS..." >&2; exit 64 ;;
esac
