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
#   cp.sh node-build    build (or reuse) kubelet and kube-scheduler (cached by version)
#   cp.sh node-up       join one kubelet node to this control plane (root; one per
#                       machine): tests/node/node.sh says what it starts and changes
#   cp.sh node-down     stop exactly what node-up started, restore the host's settings
#   cp.sh helm ARGS...  run helm (built the same way, cached by its own version)
#                       against the chart under helm/; used by the chart's tests
#   cp.sh prom-build    fetch (or reuse) Debian's `prometheus` package (server and
#                       promtool, static Go binaries) with `apt-get download` and unpack
#                       it with `dpkg-deb -x` into a cache keyed by its version; no root,
#                       nothing installed on the system (issue 20)
#   cp.sh prom-bin      print the directory holding `prometheus` and `promtool`
#
# Vault (issue 10), built the same way and cached by its own version:
#   cp.sh vault-build   build (or reuse) the vault binary
#   cp.sh vault-up      start `vault server -dev` on a random loopback port (idempotent),
#                       wait for /v1/sys/health; writes $STATE/vault.addr and vault.token
#   cp.sh vault-k8s-auth [--role R] [--prefix P] [--ttl D] [--max-ttl D] [--audience A] SA NS
#                       Kubernetes auth against this control plane (TokenReview through a
#                       reviewer ServiceAccount with system:auth-delegator), and role R
#                       (default push-to-k8s) for ServiceAccount NS/SA with a policy on
#                       KV v2 secret/P/* (default P: push-to-k8s)
#   cp.sh vault-env     print `export VAULT_ADDR=... VAULT_TOKEN=...` (the root token)
#   cp.sh vault ARGS... run the vault CLI against it with the root token
#   cp.sh vault-kill    SIGKILL Vault
#   cp.sh vault-start   start it again: same port, same root token, the Kubernetes auth
#                       and roles applied again. Dev mode keeps data in memory: KV
#                       entries and tokens issued before are gone.
#   cp.sh vault-down    stop Vault and remove its files (`down` stops it too)
#
# Environment:
#   PUSH_TO_K8S_CP_DIR   state directory (default: ${TMPDIR:-/tmp}/push-to-k8s-cp-$UID)
#   XDG_CACHE_HOME       cache root (binaries go to .../push-to-k8s/control-plane/<version>/)
#
# kube-apiserver writes an audit log of writes to Secrets, ConfigMaps,
# Leases and PushRules (metadata level: who, what, when; never a value) to $STATE/audit.log.
set -euo pipefail

KUBE_VERSION=v1.36.3
ETCD_VERSION=v3.6.8
HELM_VERSION=v3.22.0
VAULT_VERSION=v1.21.1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s/control-plane/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}"
BIN="$CACHE/bin"
HELM_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s/helm-${HELM_VERSION}"
VAULT_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s/vault-${VAULT_VERSION}"
VAULT_BIN="$VAULT_CACHE/bin/vault"
PROM_CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s"
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
    local ldflags="-s -w" flags=()
    if [[ "$(basename "$dir")" == kubernetes ]]; then
        local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
        local p=k8s.io/component-base/version
        ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
        ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    elif [[ "$(basename "$dir")" == helm ]]; then
        ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    elif [[ "$(basename "$dir")" == vault ]]; then
        # Vault embeds its version (version/VERSION); no `ui` build tag: no web UI assets.
        flags+=(-trimpath)
    fi
    say "compiling $* (slow the first time on a machine: minutes; progress every 100 packages)"
    local log="$logs/build-$(basename "$dir").log"
    set +e
    (cd "$dir" && go build -v "${flags[@]}" -ldflags "$ldflags" -o "$out/" "$@") 2>&1 | tee "$log" |
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

# kubelet and kube-scheduler for `node-up` (issue 18): same pins, own cache directory so the
# control plane's cache stays valid.
NODE_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/push-to-k8s/node-kube-${KUBE_VERSION}"
NODE_BIN="$NODE_CACHE/bin"
cmd_build_node() {
    [[ -x "$NODE_BIN/kubelet" && -x "$NODE_BIN/kube-scheduler" ]] && return 0
    mkdir -p "$NODE_CACHE"
    exec 8>"$NODE_CACHE/.build.lock"
    flock 8
    [[ -x "$NODE_BIN/kubelet" && -x "$NODE_BIN/kube-scheduler" ]] && return 0
    say "building kubelet and kube-scheduler $KUBE_VERSION into $NODE_CACHE (once per machine)"
    local tmp="$NODE_CACHE/bin.partial"
    rm -rf "$tmp"; mkdir -p "$tmp"
    go_build "$NODE_CACHE" "$HERE/kubernetes" "$tmp" k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler
    [[ -x "$tmp/kubelet" && -x "$tmp/kube-scheduler" ]] || die "node build produced no binary in $tmp"
    rm -rf "$NODE_BIN"; mv "$tmp" "$NODE_BIN"
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

cmd_build_vault() {
    [[ -x "$VAULT_BIN" ]] && return 0
    mkdir -p "$VAULT_CACHE"
    exec 8>"$VAULT_CACHE/.build.lock"
    flock 8
    [[ -x "$VAULT_BIN" ]] && return 0
    local tmp="$VAULT_CACHE/bin.partial"
    say "building Vault $VAULT_VERSION into $VAULT_CACHE (once per machine; about 15 minutes on 2 cores)"
    rm -rf "$tmp"; mkdir -p "$tmp"
    # Without cgo, as HashiCorp builds its releases: a static binary, no C compiler needed.
    CGO_ENABLED=0 go_build "$VAULT_CACHE" "$HERE/vault" "$tmp" github.com/hashicorp/vault
    [[ -x "$tmp/vault" ]] || die "the Vault build produced no binary in $tmp"
    rm -rf "$VAULT_CACHE/bin"; mv "$tmp" "$VAULT_CACHE/bin"
    say "built: $VAULT_BIN"
}

# Debian's prometheus package (issue 20): the server and promtool are static Go
# binaries; the package's other dependencies are for its web console and init
# scripts, which the tests do not use. Unpacked, never installed: no root, no
# change to the system. Cached by the package version the archive offers.
prom_version() {
    local v
    v="$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    [[ -n "$v" && "$v" != "(none)" ]] || return 1
    echo "$v"
}

prom_dir() {
    local v
    v="$(prom_version)" || die "Debian's 'prometheus' package is not known to apt (apt-cache policy prometheus); run apt-get update"
    echo "$PROM_CACHE_ROOT/prometheus-${v//[^A-Za-z0-9.+_-]/_}"
}

cmd_build_prom() {
    local dir; dir="$(prom_dir)"
    [[ -x "$dir/bin/prometheus" && -x "$dir/bin/promtool" ]] && return 0
    command -v apt-get >/dev/null || die "apt-get is required to fetch Debian's prometheus package"
    command -v dpkg-deb >/dev/null || die "dpkg-deb is required to unpack Debian's prometheus package"
    mkdir -p "$dir"
    exec 8>"$dir/.build.lock"
    flock 8
    [[ -x "$dir/bin/prometheus" && -x "$dir/bin/promtool" ]] && return 0
    local v tmp="$dir/fetch.partial"
    v="$(prom_version)"
    say "fetching Debian's prometheus $v into $dir (once per machine)"
    rm -rf "$tmp"; mkdir -p "$tmp"
    # apt-get download writes into the current directory, as the calling user.
    if ! (cd "$tmp" && timeout "$DOWNLOAD_TIMEOUT" apt-get download "prometheus=$v" >"$tmp/download.log" 2>&1); then
        sed 's/^/    /' "$tmp/download.log" | tail -n 15 >&2
        die "apt-get download prometheus=$v failed: is Debian's package archive reachable?"
    fi
    local deb; deb="$(ls "$tmp"/prometheus_*.deb 2>/dev/null | head -n 1)"
    [[ -n "$deb" ]] || die "apt-get download left no prometheus .deb in $tmp"
    dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x $deb failed"
    mkdir -p "$tmp/bin"
    mv "$tmp/root/usr/bin/prometheus" "$tmp/root/usr/bin/promtool" "$tmp/bin/" \
        || die "the prometheus package holds no usr/bin/prometheus and usr/bin/promtool"
    "$tmp/bin/promtool" --version >/dev/null 2>&1 || die "the unpacked promtool does not run: $tmp/bin/promtool --version"
    "$tmp/bin/prometheus" --version >/dev/null 2>&1 || die "the unpacked prometheus does not run: $tmp/bin/prometheus --version"
    rm -rf "$dir/bin"; mv "$tmp/bin" "$dir/bin"; rm -rf "$tmp"
    say "prometheus: $("$dir/bin/prometheus" --version 2>&1 | head -n 1) in $dir/bin"
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

# Wait (up to 30 s) until nothing holds loopback port $1 any more, so a daemon
# can listen on it again. A SIGKILLed process loses its command line (is_ours
# says gone) before the kernel has closed its sockets, and a restart in that
# window failed with "bind: address already in use" (seen in e2e_faults).
await_port_free() {
    local port="$1"
    for _ in $(seq 1 150); do
        python3 -c 'import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null && return 0
        sleep 0.2
    done
    say "port $port is still taken after 30 s"
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
    # IP:10.0.0.1 is the `kubernetes` Service address, which Pods of the test node dial
    # (cp.sh node-up forwards it to this loopback server; rustls checks IP SANs).
    issue apiserver "/CN=kube-apiserver" "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
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

# SIGTERM daemon NAME if it runs (SIGKILL after 10 s) and wait until it is gone.
stop_daemon() {
    local pid
    if is_ours "$STATE/$1.pid"; then
        pid="$(cat "$STATE/$1.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

# cmd_down [keep-vault]: stop every daemon of the state directory (Vault too) and
# remove it. keep-vault (a fresh `up`): a running Vault and its vault* files stay.
cmd_down() {
    [[ -d "$STATE" ]] || return 0
    local name
    if [[ "${1:-}" == keep-vault ]] && is_ours "$STATE/vault.pid"; then
        for name in kube-controller-manager kube-apiserver etcd; do stop_daemon "$name"; done
        find "$STATE" -mindepth 1 -maxdepth 1 ! -name 'vault*' -exec rm -rf {} +
        return 0
    fi
    for name in vault kube-controller-manager kube-apiserver etcd; do stop_daemon "$name"; done
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
        cmd_down keep-vault
        mkdir -p "$STATE"
        make_pki
        if launch; then
            # A Vault of this state directory authenticates against the new apiserver.
            vault_apply_recorded_k8s_auth || say "warning: could not configure Vault's Kubernetes auth again; log: $STATE/vault.log"
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
  - group: "push-to-k8s.io"
    resources: ["pushrules", "pushrules/status"]
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
        case "$name" in
            kube-apiserver) await_port_free "$(cat "$STATE/apiserver.port")" ;;
            etcd) await_port_free "$(cat "$STATE/etcd.port")" ;;
        esac
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
        --kubelet-preferred-address-types InternalIP \
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
                --controllers namespace-controller,garbage-collector-controller,serviceaccount-controller,clusterrole-aggregation-controller \
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

# ---------------------------------------------------------------- Vault

# Vault in dev mode: in-memory storage, unsealed, KV v2 at secret/, the root
# token we give it. Its files in the state directory all start with "vault".
vault_healthy() {
    [[ -f "$STATE/vault.addr" ]] || return 1
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$(cat "$STATE/vault.addr")/v1/sys/health" 2>/dev/null)" == 200 ]]
}

vault_ready() { is_ours "$STATE/vault.pid" && vault_healthy; }

# The vault CLI against our Vault with the root token, whatever the caller's environment.
vault_cli() {
    env -u VAULT_NAMESPACE -u VAULT_FORMAT -u VAULT_CACERT -u VAULT_CLIENT_CERT -u VAULT_CLIENT_KEY \
        VAULT_ADDR="$(cat "$STATE/vault.addr")" VAULT_TOKEN="$(cat "$STATE/vault.token")" "$VAULT_BIN" "$@"
}

# Wait until the Vault just started answers /v1/sys/health (active, unsealed).
vault_wait() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    until vault_healthy; do
        if ! is_ours "$STATE/vault.pid"; then
            tail -n 20 "$STATE/vault.log" | sed 's/^/    /' >&2
            say "Vault exited while starting; log: $STATE/vault.log"
            return 1
        fi
        if (( SECONDS > deadline )); then
            say "Vault: not healthy within ${READY_TIMEOUT}s; log: $STATE/vault.log"
            return 1
        fi
        sleep 0.2
    done
}

# A new Vault on a free port with a new root token.
vault_launch() {
    local port token
    port="$(free_port)"
    token="root-$(openssl rand -hex 16)"
    echo "http://127.0.0.1:$port" >"$STATE/vault.addr"
    (umask 077; echo "$token" >"$STATE/vault.token")
    # Merged into dev mode's own configuration (in-memory storage, one listener);
    # its path on the command line is also what makes the process recognisably ours.
    printf 'ui = false\ndisable_mlock = true\napi_addr = "http://127.0.0.1:%s"\n' "$port" >"$STATE/vault.hcl"
    start vault "$VAULT_BIN" server -dev -dev-listen-address="127.0.0.1:$port" \
        -dev-root-token-id="$token" -dev-no-store-token -config="$STATE/vault.hcl"
    vault_wait
}

# Start Vault again with its recorded command line (same port and root token) and
# apply the recorded Kubernetes auth again: dev mode forgets everything on exit.
vault_resume() {
    local argv=()
    if ! is_ours "$STATE/vault.pid"; then
        mapfile -d '' -t argv <"$STATE/vault.cmd"
        echo "---- $(date -u +%FT%TZ) cp.sh: started again" >>"$STATE/vault.log"
        start vault "${argv[@]}"
        say "started Vault again (pid $(cat "$STATE/vault.pid"))"
    fi
    vault_wait && vault_apply_recorded_k8s_auth
}

cmd_vault_up() {
    # Built before taking the state directory's lock: `up` and `down` need not wait for it.
    cmd_build_vault
    mkdir -p "$(dirname "$STATE")"
    exec 9>"$STATE.lock"
    flock 9
    if vault_ready; then
        say "Vault already up: VAULT_ADDR=$(cat "$STATE/vault.addr")"
        return 0
    fi
    mkdir -p "$STATE"
    if [[ -f "$STATE/vault.cmd" ]] && vault_resume; then
        say "Vault up (started again): VAULT_ADDR=$(cat "$STATE/vault.addr")"
        return 0
    fi
    local attempt
    for attempt in 1 2; do
        stop_daemon vault
        rm -rf "$STATE"/vault*
        if vault_launch; then
            say "Vault up: VAULT_ADDR=$(cat "$STATE/vault.addr"), root token in $STATE/vault.token, log $STATE/vault.log"
            return 0
        fi
        [[ $attempt == 1 ]] || die "Vault did not start, twice; log: $STATE/vault.log"
        say "starting Vault once more, on a new port"
    done
}

cmd_vault_down() {
    [[ -d "$STATE" ]] || return 0
    stop_daemon vault
    rm -rf "$STATE"/vault*
    rmdir "$STATE" 2>/dev/null || true
}

# The policy of a role: KV v2 data and metadata under secret/PREFIX/.
vault_policy() {
    local p="${1:+$1/}"
    cat <<EOF
path "secret/data/${p}*" {
  capabilities = ["create", "read", "update", "patch", "delete", "list"]
}
path "secret/metadata/${p}*" {
  capabilities = ["create", "read", "update", "patch", "delete", "list"]
}
path "secret/delete/${p}*" {
  capabilities = ["update"]
}
path "secret/undelete/${p}*" {
  capabilities = ["update"]
}
path "secret/destroy/${p}*" {
  capabilities = ["update"]
}
EOF
}

# vault_k8s_auth ARGS...: see `vault-k8s-auth` in the header. Prints the role's name;
# returns 2 on a usage error, 1 on a failure.
vault_k8s_auth() {
    local role=push-to-k8s prefix=push-to-k8s ttl=1h max_ttl=24h audience=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --role) role="${2:?--role needs a value}"; shift 2 ;;
            --prefix) prefix="${2?--prefix needs a value}"; shift 2 ;;
            --ttl) ttl="${2:?--ttl needs a value}"; shift 2 ;;
            --max-ttl) max_ttl="${2:?--max-ttl needs a value}"; shift 2 ;;
            --audience) audience="${2:?--audience needs a value}"; shift 2 ;;
            -*) say "error: vault-k8s-auth: unknown option $1"; return 2 ;;
            *) break ;;
        esac
    done
    if [[ $# != 2 ]]; then
        say "error: usage: $0 vault-k8s-auth [--role NAME] [--prefix PATH] [--ttl DURATION] [--max-ttl DURATION] [--audience AUD] SERVICEACCOUNT NAMESPACE"
        return 2
    fi
    [[ "$role" =~ ^[A-Za-z0-9_.-]+$ ]] || { say "error: vault-k8s-auth: bad role name '$role'"; return 2; }
    prefix="${prefix#/}"; prefix="${prefix%/}"
    local sa="$1" ns="$2" kc=(kubectl --kubeconfig "$STATE/admin.kubeconfig") extra=()
    # The reviewer: Vault sends each login's token to the apiserver's TokenReview with it.
    "${kc[@]}" apply -f - >/dev/null <<EOF || return 1
apiVersion: v1
kind: ServiceAccount
metadata: {name: vault-token-reviewer, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: push-to-k8s-vault-token-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects:
- {kind: ServiceAccount, name: vault-token-reviewer, namespace: kube-system}
EOF
    (umask 077; "${kc[@]}" -n kube-system create token vault-token-reviewer --duration 8760h \
        >"$STATE/vault.reviewer-jwt") || return 1
    local mounts
    mounts="$(vault_cli auth list -format=json)" || return 1
    if ! grep -q '"kubernetes/"' <<<"$mounts"; then
        vault_cli auth enable kubernetes >/dev/null || return 1
    fi
    vault_cli write auth/kubernetes/config \
        kubernetes_host="https://127.0.0.1:$(cat "$STATE/apiserver.port")" \
        kubernetes_ca_cert=@"$STATE/pki/ca.crt" token_reviewer_jwt=@"$STATE/vault.reviewer-jwt" \
        disable_local_ca_jwt=true >/dev/null || return 1
    vault_policy "$prefix" | vault_cli policy write "$role" - >/dev/null || return 1
    [[ -z "$audience" ]] || extra=(audience="$audience")
    # Without an audience Vault warns that it would check one: not shown unless it fails.
    local out
    out="$(vault_cli write "auth/kubernetes/role/$role" bound_service_account_names="$sa" \
        bound_service_account_namespaces="$ns" token_policies="$role" \
        token_ttl="$ttl" token_max_ttl="$max_ttl" "${extra[@]}" 2>&1)" || { echo "$out" >&2; return 1; }
    echo "$role"
}

# Apply every recorded `vault-k8s-auth` again (Vault restarted, or a new control plane).
vault_apply_recorded_k8s_auth() {
    local f args=()
    vault_ready || return 0
    [[ -f "$STATE/admin.kubeconfig" ]] || return 0
    for f in "$STATE"/vault.k8s-auth/*; do
        [[ -f "$f" ]] || continue
        mapfile -d '' -t args <"$f"
        vault_k8s_auth "${args[@]}" >/dev/null || return 1
    done
}

cmd_vault_k8s_auth() {
    mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"; flock 9
    vault_ready || die "Vault in $STATE is not up (cp.sh vault-up)"
    ready || die "the control plane in $STATE is not up (cp.sh up)"
    local role rc=0
    role="$(vault_k8s_auth "$@")" || rc=$?
    [[ $rc != 2 ]] || exit 64
    [[ $rc == 0 ]] || die "configuring Vault's Kubernetes auth failed; Vault log: $STATE/vault.log"
    # Recorded under the role's name: vault-start and a new control plane apply it again.
    mkdir -p "$STATE/vault.k8s-auth"
    printf '%s\0' "$@" >"$STATE/vault.k8s-auth/$role"
    say "Vault: Kubernetes auth role '$role' for ServiceAccount ${*: -1}/${*: -2:1}"
}

case "${1:-}" in
    build) cmd_build; cmd_build_helm ;;
    node-build) cmd_build_node ;;
    prom-build) cmd_build_prom ;;
    prom-bin) cmd_build_prom; echo "$(prom_dir)/bin" ;;
    node-up|node-down|node-status)
        [[ $1 == node-up ]] && cmd_build_node
        export STATE BIN NODE_BIN
        exec bash "$HERE/../node/node.sh" "${1#node-}" ;;
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
    vault-build) cmd_build_vault ;;
    vault-up) cmd_vault_up ;;
    vault-down)
        mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"; flock 9
        cmd_vault_down; say "Vault down" ;;
    vault-k8s-auth) shift; cmd_vault_k8s_auth "$@" ;;
    vault-env)
        [[ -f "$STATE/vault.addr" && -f "$STATE/vault.token" ]] || die "Vault in $STATE is not up (cp.sh vault-up)"
        echo "export VAULT_ADDR=$(cat "$STATE/vault.addr") VAULT_TOKEN=$(cat "$STATE/vault.token")" ;;
    vault)
        [[ -f "$STATE/vault.addr" && -f "$STATE/vault.token" ]] || die "Vault in $STATE is not up (cp.sh vault-up)"
        shift
        exec env -u VAULT_NAMESPACE VAULT_ADDR="$(cat "$STATE/vault.addr")" VAULT_TOKEN="$(cat "$STATE/vault.token")" \
            "$VAULT_BIN" "$@" ;;
    vault-kill)
        mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"; flock 9
        kill_daemon vault ;;
    vault-start)
        mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"; flock 9
        [[ -f "$STATE/vault.cmd" ]] || die "Vault in $STATE was never started (cp.sh vault-up)"
        vault_resume || die "could not start Vault again; log: $STATE/vault.log"
        say "Vault ready: VAULT_ADDR=$(cat "$STATE/vault.addr")" ;;
    *) echo "usage: $0 build|prom-build|prom-bin|up|down|env|status|kill NAME...|start [NAME...]|restart NAME...|helm ARGS...|vault-build|vault-up|vault-k8s-auth [OPTIONS] SA NS|vault-env|vault ARGS...|vault-kill|vault-start|vault-down" >&2; exit 64 ;;
esac
