#!/usr/bin/env bash
# The host's network settings and the kernel settings the test node may touch, one per
# line, for a before/after comparison around `cp.sh node-up` ... `node-down` (tests/run.sh).
set -uo pipefail
sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding vm.overcommit_memory kernel.panic kernel.panic_on_oops 2>/dev/null
sysctl -a 2>/dev/null | grep -E '^net\.(ipv4\.conf\.(all|default)|bridge)\.' | sort
ip -o link show | awk '{print "link", $2}' | sort
ip -o addr show | awk '{print "addr", $2, $3, $4}' | sort
ip route show table all | sed 's/^/route /' | sort
ip rule show | sed 's/^/rule /'
command -v iptables-save >/dev/null && iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//' | sed 's/^/iptables /'
command -v nft >/dev/null && nft list ruleset 2>/dev/null | sed 's/^/nft /'
for p in /run/containerd /run/netns /var/lib/kubelet /etc/cni/net.d /var/lib/cni; do [[ -e $p ]] && echo "path $p"; done
mount | grep -E 'kubelet|containerd|netns|p2k8s' | sed 's/^/mount /'
ls /sys/fs/cgroup/memory 2>/dev/null | grep -E '^kubepods' | sed 's/^/cgroup /'
exit 0
