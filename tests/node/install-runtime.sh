#!/usr/bin/env bash
# Installs what the test node (cp.sh node-up, issue 18) runs Pods with, from the Debian
# packages of the machine's distribution: containerd, runc, the CNI plugins (bridge,
# host-local, loopback) and socat (forwards the `kubernetes` Service address to the
# loopback API server). Idempotent; no daemon is started (containerd is started by
# node-up with its own configuration, sockets and directories).
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || need+=(containernetworking-plugins)
command -v socat >/dev/null || need+=(socat)
[[ ${#need[@]} == 0 ]] && exit 0
[[ $(id -u) == 0 ]] || { echo "install-runtime: root needed to install ${need[*]}" >&2; exit 1; }
echo "install-runtime: installing ${need[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
# No service is started by the packages: policy-rc.d refuses every start while we install.
policy=/usr/sbin/policy-rc.d
created=0
if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
trap '[[ $created == 1 ]] && rm -f "$policy"' EXIT
nice -n 19 apt-get update -qq >/dev/null || true
nice -n 19 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for b in containerd runc socat; do command -v "$b" >/dev/null || { echo "install-runtime: $b still missing" >&2; exit 1; }; done
[[ -x /usr/lib/cni/bridge ]] || { echo "install-runtime: CNI plugins missing in /usr/lib/cni" >&2; exit 1; }
