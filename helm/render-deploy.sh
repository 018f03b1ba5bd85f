#!/usr/bin/env bash
# deploy.yaml is the chart under helm/push-to-k8s rendered with its default values
# for the namespace `push-to-k8s`, plus that Namespace: one source of truth for
# the manifests and their RBAC. After changing the chart, regenerate it:
#   bash helm/render-deploy.sh > deploy.yaml
# A test (tests/rbac.rs) fails while deploy.yaml and the chart disagree.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cat <<'EOF'
# push-to-k8s: plain manifests, generated from the Helm chart by
# helm/render-deploy.sh; edit the chart, not this file.
# Sources live in the namespace the controller runs in (`push-to-k8s`).
# RBAC is exactly what the code uses:
#   secrets     get/list/watch cluster-wide (replicas), create/update/patch/delete (copies)
#   namespaces  get (start-up check), list/watch (targets)
#   events      create/patch in the source namespace (Events on sources)
#   leases      create, get/update of the Lease `push-to-k8s`, and events
#               create/patch, in the release namespace (leader election)
#   PushRules   pushrules get/list/watch/patch, pushrules/status patch, the CRD
#               pushrules.push-to-k8s.io get (by name), events create/patch
#               cluster-wide (Events on rules' sources and on rules)
#               deployments list/watch cluster-wide (a rule's workloadVault; only
#               the namespaces it names are watched)
# The PushRule CRD (kept by `helm uninstall`) and its read role, aggregated into
# view/edit/admin, are included (docs/pushrule.md).
# A ValidatingAdmissionPolicy (Kubernetes 1.30+) refuses edits and deletes of the
# copies, a labelled source's and a PushRule's, by anyone but the controller
# (docs/security.md, "Copies cannot be edited").
apiVersion: v1
kind: Namespace
metadata:
  name: push-to-k8s
  labels:
    # The controller runs under the restricted Pod Security profile.
    pod-security.kubernetes.io/enforce: restricted
EOF
# Rendered for Kubernetes 1.30+ (the chart's admission policy included; on an older
# cluster `kubectl apply` refuses those two objects and applies the rest).
bash tests/control-plane/cp.sh helm template push-to-k8s helm/push-to-k8s --namespace push-to-k8s \
    --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy
