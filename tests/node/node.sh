#!/usr/bin/env bash
# One kubelet node for the test control plane (issue 18), run through
#   cp.sh node-up | node-down | node-status
# which sets STATE (the control plane's state dir), BIN (its binaries) and NODE_BIN
# (kubelet, kube-scheduler). Root only; one node per machine (fixed bridge, port 10250,
# cgroup root /kubepods).
#
# node-up starts, all under $STATE/node:
#   - containerd (Debian's, tests/node/install-runtime.sh) with its own socket, root,
#     state and runc root; CRI restrict_oom_score_adj (this VM lacks CAP_SYS_RESOURCE);
#   - a bridge p2k8s0 owning 10.88.77.1/24 (the node's address) and 10.0.0.1/32 (the
#     `kubernetes` Service address); Pods get 10.88.77.10-250 from the CNI bridge
#     plugin with no gateway, no masquerade and one route, 10.0.0.1/32 via the bridge:
#     nothing routes a Pod's packet off the machine, and ip_forward stays 0;
#   - socat forwarding 10.0.0.1:443 to the loopback kube-apiserver;
#   - kube-scheduler and a second kube-controller-manager running only the controllers
#     Pods need (deployment, replicaset, root-ca publisher, node-lifecycle, pod GC);
#   - the kubelet (PATH without /usr/sbin: it adds no iptables chain; no DNS server,
#     an empty resolv.conf for Pods), node name p2k8s-node.
# The kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops at start:
# they are restored once the node is Ready, and again at node-down.
# node-down stops exactly those processes (pid files + command line naming $STATE/node),
# removes the Pods' containers, the bridge, the cgroups and the files (and
# /var/lib/kubelet, /var/lib/cni when node-up found them absent).
set -euo pipefail
: "${STATE:?run through cp.sh}" "${BIN:?}" "${NODE_BIN:?}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
N="$STATE/node"
NODE_NAME=p2k8s-node
BRIDGE=p2k8s0
NODE_IP=10.88.77.1
SVC_IP=10.0.0.1
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops)
DAEMONS=(containerd socat kube-scheduler kube-controller-manager-node kubelet)

say() { echo "node: $*" >&2; }
die() { echo "node: error: $*" >&2; exit 1; }

is_ours() {
    local pid
    [[ -f "$N/$1.pid" ]] || return 1
    pid="$(cat "$N/$1.pid")"
    [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$N/"
}

start() {
    local name="$1"; shift
    setsid "$@" >>"$N/$name.log" 2>&1 </dev/null 8>&- 9>&- &
    echo $! >"$N/$name.pid"
}

stop() {
    local pid
    is_ours "$1" || return 0
    pid="$(cat "$N/$1.pid")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

kubectl_() { kubectl --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

restore_sysctls() {
    [[ -f "$N/sysctl.saved" ]] || return 0
    local k v
    while read -r k v; do
        [[ "$(sysctl -n "$k")" == "$v" ]] || sysctl -qw "$k=$v"
    done <"$N/sysctl.saved"
}

node_ready() {
    [[ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

status() {
    for d in "${DAEMONS[@]}"; do is_ours "$d" || return 1; done
    node_ready
}

pause_image() {
    # The sandbox ("pause") image: a static C program that sleeps until a signal, packed by
    # the project's image script (no registry is reachable for the usual one).
    local src="$N/pause.c" out="$N/pause"
    cat >"$src" <<'EOF'
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void bye(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGINT, bye); signal(SIGTERM, bye); signal(SIGCHLD, reap);
    for (;;) pause();
}
EOF
    gcc -static -Os -o "$out" "$src" || die "could not build the pause program (gcc with static libc needed)"
    python3 "$HERE/../../image/build-image.py" --binary "$out" --name localhost/p2k8s-pause:1 --out "$N/pause-image" >/dev/null
    ctr --address "$N/containerd.sock" -n k8s.io images import "$N/pause-image/push-to-k8s.oci.tar" >/dev/null
}

up() {
    [[ $(id -u) == 0 ]] || die "the node needs root"
    [[ -f "$STATE/admin.kubeconfig" ]] || die "the control plane in $STATE is not up (cp.sh up first)"
    if status; then say "already up"; return 0; fi
    bash "$HERE/install-runtime.sh"
    down quiet
    mkdir -p "$N"/{cni,ipam,kubelet,pki}
    # containerd 1.6's shims put their sockets in /run/containerd/s whatever its config says.
    [[ -e /run/containerd ]] || touch "$N/made-run-containerd"
    # The kubelet puts its device-plugin socket in /var/lib/kubelet/device-plugins
    # whatever --root-dir says, and the CNI library caches results in /var/lib/cni:
    # removed again at node-down when they were not there before.
    for d in /var/lib/kubelet /var/lib/cni; do
        [[ -e $d ]] || echo "$d" >>"$N/made-dirs"
    done
    # Record the host settings the kubelet (or anything here) may change.
    for k in "${SYSCTLS[@]}"; do echo "$k $(sysctl -n "$k")"; done >"$N/sysctl.saved"

    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip addr add "$SVC_IP/32" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    cat >"$N/cni/10-p2k8s.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "p2k8s", "plugins": [{
  "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
  "ipam": {"type": "host-local", "dataDir": "$N/ipam",
           "ranges": [[{"subnet": "10.88.77.0/24", "rangeStart": "10.88.77.10", "rangeEnd": "10.88.77.250"}]],
           "routes": [{"dst": "$SVC_IP/32", "gw": "$NODE_IP"}]}}]}
EOF
    cat >"$N/containerd.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$N/containerd.sock"
[ttrpc]
  address = "$N/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  sandbox_image = "localhost/p2k8s-pause:1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$N/runc"
        SystemdCgroup = false
EOF
    start containerd containerd --config "$N/containerd.toml"
    for _ in $(seq 1 100); do ctr --address "$N/containerd.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
    ctr --address "$N/containerd.sock" version >/dev/null 2>&1 || { tail -20 "$N/containerd.log" >&2; die "containerd did not start"; }
    pause_image

    # socat takes no stray argument: exec -a names $N in its command line (is_ours).
    start socat bash -c "exec -a socat-$N/ socat TCP-LISTEN:443,bind=$SVC_IP,reuseaddr,fork TCP:127.0.0.1:$(cat "$STATE/apiserver.port")"
    start kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig "$STATE/admin.kubeconfig" \
        --authentication-kubeconfig "$STATE/admin.kubeconfig" --authorization-kubeconfig "$STATE/admin.kubeconfig" \
        --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 --cert-dir "$N/pki"
    start kube-controller-manager-node "$BIN/kube-controller-manager" --kubeconfig "$STATE/admin.kubeconfig" \
        --authentication-kubeconfig "$STATE/admin.kubeconfig" --authorization-kubeconfig "$STATE/admin.kubeconfig" \
        --controllers deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller,pod-garbage-collector-controller,disruption-controller \
        --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 --cert-dir "$N/pki" \
        --root-ca-file "$STATE/pki/ca.crt"
    cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$N/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
resolvConf: ""
clusterDNS: []
failSwapOn: false
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
EOF
    # No /usr/sbin on its PATH: the kubelet then finds no iptables and adds no chain.
    start kubelet env PATH=/usr/local/bin:/usr/bin:/bin "$NODE_BIN/kubelet" --config "$N/kubelet.yaml" \
        --kubeconfig "$STATE/admin.kubeconfig" --root-dir "$N/kubelet" --cert-dir "$N/pki" \
        --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
    say "waiting for node $NODE_NAME to be Ready (up to 120 s)"
    for _ in $(seq 1 600); do
        node_ready && break
        for d in "${DAEMONS[@]}"; do
            is_ours "$d" || { tail -20 "$N/$d.log" >&2; die "$d exited; log: $N/$d.log"; }
        done
        sleep 0.2
    done
    node_ready || { tail -20 "$N/kubelet.log" >&2; die "node not Ready within 120 s; logs in $N"; }
    restore_sysctls
    [[ "$(sysctl -n net.ipv4.ip_forward)" == 0 ]] || say "warning: ip_forward was not 0 before node-up"
    say "up: node $NODE_NAME Ready (logs in $N)"
}

down() {
    [[ -d "$N" ]] || return 0
    stop kubelet
    # Every Pod's containers and sandboxes go with the node (they run under containerd's shims).
    if is_ours containerd; then
        local c=(ctr --address "$N/containerd.sock" -n k8s.io)
        for t in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1 || true; done
        sleep 0.5
        for t in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
        for t in $("${c[@]}" containers ls -q 2>/dev/null); do "${c[@]}" containers delete "$t" >/dev/null 2>&1 || true; done
    fi
    for d in kube-controller-manager-node kube-scheduler socat containerd; do stop "$d"; done
    # Shims that outlived containerd (their command line names our socket).
    for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $N/containerd.sock" || true); do kill -KILL "$p" 2>/dev/null || true; done
    kubectl_ delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    # The Pods' veth pairs: a sandbox network namespace may outlive its Pod (seen: one veth
    # left after a full test run, caught by run-pods.sh's host comparison).
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        for v in $(ip -o link show master "$BRIDGE" | awk -F': ' '{print $2}' | cut -d@ -f1); do
            ip link delete "$v" 2>/dev/null || true
        done
        ip link delete "$BRIDGE"
    fi
    # Network namespaces and mounts under our state dir.
    grep -F " $N/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    # The Pods' cgroups (kubepods tree), deepest first.
    for h in /sys/fs/cgroup/*/; do
        [[ -d "$h/kubepods" ]] && find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    restore_sysctls
    if [[ -f "$N/made-run-containerd" ]]; then
        rmdir /run/containerd/s 2>/dev/null || true
        rmdir /run/containerd 2>/dev/null || say "warning: /run/containerd not empty after the node stopped"
    fi
    if [[ -f "$N/made-dirs" ]]; then
        while read -r d; do
            case "$d" in /var/lib/kubelet | /var/lib/cni) rm -rf "$d" ;; esac
        done <"$N/made-dirs"
    fi
    rm -rf "$N"
    [[ "${1:-}" == quiet ]] || say "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: node.sh up|down|status" ;;
esac
