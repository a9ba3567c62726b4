{{/* Chart name, overridable. */}}
{{- define "scopegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (63 characters at most, a DNS label). A release name that already
contains the chart name is used as it is.
*/}}
{{- define "scopegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "scopegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "scopegate.labels" -}}
helm.sh/chart: {{ include "scopegate.chart" . }}
{{ include "scopegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: ext-authz
app.kubernetes.io/part-of: scopegate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels (immutable once installed). */}}
{{- define "scopegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scopegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scopegate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scopegate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "etcd" when etcd endpoints are given, otherwise "rules" (the embedded rules-file mode). */}}
{{- define "scopegate.mode" -}}
{{- if .Values.etcd.endpoints }}etcd{{ else }}rules{{ end }}
{{- end }}

{{/* Name of the ConfigMap holding rules.yaml (the chart's own, or an existing one). */}}
{{- define "scopegate.rulesConfigMapName" -}}
{{- if .Values.existingRulesConfigMap }}
{{- .Values.existingRulesConfigMap }}
{{- else }}
{{- printf "%s-rules" (include "scopegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The rules document as YAML text ("" when none is given). `rules` may be a mapping or a string
holding a YAML/JSON document; a string that does not parse, or has top-level keys scopegate
does not know, fails the render (scopegate would refuse to start on it).
*/}}
{{- define "scopegate.rulesDocument" -}}
{{- $rules := .Values.rules }}
{{- if kindIs "string" $rules }}
{{- if trim $rules }}
{{- $parsed := fromYaml $rules }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "rules: not a valid YAML/JSON mapping: %s" (get $parsed "Error")) }}
{{- end }}
{{- range $key, $_ := $parsed }}
{{- if not (has $key (list "issuers" "routes" "scopes" "revoked")) }}
{{- fail (printf "rules: unknown top-level key %q (expected issuers, routes, scopes, revoked)" $key) }}
{{- end }}
{{- end }}
{{- $rules }}
{{- end }}
{{- else if $rules }}
{{- range $id, $issuer := $rules.issuers }}
{{- if and (kindIs "map" $issuer) (kindIs "map" $issuer.jwks) }}
{{- range $issuer.jwks.keys }}
{{- if and (kindIs "map" .) (hasKey . "true") }}
{{- fail (printf "rules.issuers.%s.jwks: a key has a field named \"true\": Helm reads values as YAML 1.1, where a bare `y:` means true; write \"y\": (quoted) for EC keys" $id) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $rules }}
{{- end }}
{{- end }}

{{/* Secret with the listener's tls.crt/tls.key: the existing one, or cert-manager's. */}}
{{- define "scopegate.tlsSecretName" -}}
{{- if eq .Values.tls.source "certManager" }}
{{- printf "%s-tls" (include "scopegate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* More than one pod runs (a PodDisruptionBudget makes sense). */}}
{{- define "scopegate.multiplePods" -}}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int64 .Values.autoscaling.minReplicas) 1 }}true{{ end }}
{{- else if gt (int64 .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/* PromQL label matchers selecting this release's series (the ServiceMonitor's job). */}}
{{- define "scopegate.seriesSelector" -}}
{{- .Values.metrics.prometheusRule.selector | default (printf "namespace=%q, job=%q" .Release.Namespace (include "scopegate.fullname" .)) }}
{{- end }}

{{/* Checks of the listener TLS, autoscaling and NetworkPolicy values. */}}
{{- define "scopegate.validateDeployment" -}}
{{- $tls := .Values.tls }}
{{- if and $tls.clientAuth.enabled (not $tls.enabled) }}
{{- fail "tls.clientAuth.enabled needs tls.enabled (client certificates are part of the listener's TLS)" }}
{{- end }}
{{- if $tls.enabled }}
{{- if and (eq $tls.source "secret") (not $tls.existingSecret) }}
{{- fail "tls.enabled with tls.source=secret needs tls.existingSecret (a kubernetes.io/tls Secret), or use tls.source=certManager" }}
{{- end }}
{{- if and (eq $tls.source "certManager") (not $tls.certManager.issuerRef.name) }}
{{- fail "tls.source=certManager needs tls.certManager.issuerRef.name (the Issuer or ClusterIssuer that signs the certificate)" }}
{{- end }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if lt (int64 .Values.autoscaling.maxReplicas) (int64 .Values.autoscaling.minReplicas) }}
{{- fail (printf "autoscaling.maxReplicas (%d) must not be below autoscaling.minReplicas (%d)" (int64 .Values.autoscaling.maxReplicas) (int64 .Values.autoscaling.minReplicas)) }}
{{- end }}
{{- if and (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs a target: autoscaling.targetCPUUtilizationPercentage and/or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and .Values.autoscaling.targetCPUUtilizationPercentage (not (and .Values.resources .Values.resources.requests .Values.resources.requests.cpu)) }}
{{- fail "autoscaling on CPU needs resources.requests.cpu (utilisation is a percentage of the request)" }}
{{- end }}
{{- end }}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.grpcFrom) }}
{{- fail "networkPolicy.enabled needs networkPolicy.grpcFrom (the Envoy gateway or mesh namespaces/pods that ask scopegate); without it nothing could reach the gRPC port" }}
{{- end }}
{{- end }}

{{/* Render-time checks of combinations that a JSON schema cannot express well. */}}
{{- define "scopegate.validate" -}}
{{- include "scopegate.validateDeployment" . }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- $needed := add .Values.shutdown.preStopSleepSeconds .Values.shutdown.drainTimeoutSeconds }}
{{- if le $grace (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than shutdown.preStopSleepSeconds + shutdown.drainTimeoutSeconds (%d), or in-flight checks are killed before they drain" $grace (int $needed)) }}
{{- end }}
{{- if eq (include "scopegate.mode" .) "rules" }}
{{- if and (not .Values.existingRulesConfigMap) (not (include "scopegate.rulesDocument" .)) }}
{{- fail "no rule source: set `rules` (rules-file mode), `existingRulesConfigMap`, or `etcd.endpoints`" }}
{{- end }}
{{- else }}
{{- $tls := .Values.etcd.tls }}
{{- if $tls.existingSecret }}
{{- range .Values.etcd.endpoints }}
{{- if hasPrefix "http://" . }}
{{- fail (printf "etcd.tls.existingSecret is set but endpoint %q is plain http: use https:// endpoints with TLS" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if ne (empty $tls.certKey) (empty $tls.keyKey) }}
{{- fail "etcd.tls.certKey and etcd.tls.keyKey go together: set both (mutual TLS) or neither (server-only TLS)" }}
{{- end }}
{{- $auth := .Values.etcd.auth }}
{{- if and $auth.user (not $auth.existingSecret) }}
{{- fail "etcd.auth.user needs etcd.auth.existingSecret (the Secret holding the password)" }}
{{- end }}
{{- if and $auth.existingSecret (not $auth.user) }}
{{- fail "etcd.auth.existingSecret needs etcd.auth.user" }}
{{- end }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (eq .name "SCOPEGATE_ETCD_PASSWORD") (hasKey . "value") }}
{{- fail "extraEnv: never put the etcd password in a plain value; use etcd.auth.existingSecret (mounted as a file)" }}
{{- end }}
{{- end }}
{{- end }}
