{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "gce.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "gce.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gce.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gce.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gce.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gce.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: gpu-carbon-exporter
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "gce.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gce.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gce.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The scheme of the metrics port: HTTPS when the web config enables TLS. */}}
{{- define "gce.scheme" -}}
{{- if and .Values.webConfig.existingSecret .Values.webConfig.tls -}}HTTPS{{- else -}}HTTP{{- end -}}
{{- end -}}

{{/*
The daemon's config file: .Values.config with the keys the chart owns filled in.
kubernetes.enabled defaults to true (the chart runs in a cluster);
kubernetes.podresources.enabled follows podResources.enabled, because the socket is
only mounted then.
*/}}
{{- define "gce.config" -}}
{{- $config := deepCopy (default dict .Values.config) -}}
{{- $kubernetes := default dict (get $config "kubernetes") -}}
{{- if not (hasKey $kubernetes "enabled") -}}
{{- $_ := set $kubernetes "enabled" true -}}
{{- end -}}
{{- $podresources := default dict (get $kubernetes "podresources") -}}
{{- $_ := set $podresources "enabled" .Values.podResources.enabled -}}
{{- $_ := set $podresources "socket" (printf "%s/kubelet.sock" (trimSuffix "/" .Values.podResources.hostPath)) -}}
{{- $_ := set $kubernetes "podresources" $podresources -}}
{{- $_ := set $config "kubernetes" $kubernetes -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Refuse combinations the schema cannot express, each with the fix. */}}
{{- define "gce.validate" -}}
{{- if and .Values.podResources.enabled (not .Values.securityContext.runAsRoot) -}}
{{- fail "podResources.enabled=true needs securityContext.runAsRoot=true: the kubelet creates pod-resources/kubelet.sock owned by root with mode 0755 and connecting to a Unix socket needs write permission on it. Set both, or leave podResources.enabled=false (allocation-only holders are then not seen)." -}}
{{- end -}}
{{- if and .Values.carbonTokens.env (not .Values.carbonTokens.existingSecret) -}}
{{- fail "carbonTokens.env is set but carbonTokens.existingSecret is empty: name the Secret that holds the tokens." -}}
{{- end -}}
{{- if and .Values.webConfig.tls (not .Values.webConfig.existingSecret) -}}
{{- fail "webConfig.tls=true needs webConfig.existingSecret: the Secret with the web config that enables TLS." -}}
{{- end -}}
{{- end -}}
