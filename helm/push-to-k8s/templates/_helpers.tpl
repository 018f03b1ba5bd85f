{{/* Labels that select this release's pods; never change them (a Deployment's selector is immutable). */}}
{{- define "push-to-k8s.selectorLabels" -}}
app.kubernetes.io/name: push-to-k8s
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "push-to-k8s.labels" -}}
{{ include "push-to-k8s.selectorLabels" . }}
{{- end }}

{{/* Where the sources live (and so their Events): env.NAMESPACE, else the release namespace. */}}
{{- define "push-to-k8s.sourceNamespace" -}}
{{ .Values.env.NAMESPACE | default .Release.Namespace }}
{{- end }}

{{/* The Lease: env.LEASE_NAME, else the release name (two releases in one namespace never share one). */}}
{{- define "push-to-k8s.leaseName" -}}
{{ .Values.env.LEASE_NAME | default .Release.Name }}
{{- end }}

{{- define "push-to-k8s.leaseNamespace" -}}
{{ .Values.env.LEASE_NAMESPACE | default .Release.Namespace }}
{{- end }}

{{/* The PromQL selector of this release's metrics. */}}
{{- define "push-to-k8s.metricsSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q,namespace=%q" .Release.Name .Release.Namespace) -}}
{{- end }}
