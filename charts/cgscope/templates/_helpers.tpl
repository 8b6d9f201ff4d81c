{{/* Chart name, at most 63 characters (a label value). */}}
{{- define "cgscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects; the release name alone when it already
contains the chart name. At most 63 characters (a DNS label).
*/}}
{{- define "cgscope.fullname" -}}
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

{{- define "cgscope.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the pods; never change them between upgrades. */}}
{{- define "cgscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cgscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cgscope.labels" -}}
helm.sh/chart: {{ include "cgscope.chart" . }}
{{ include "cgscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "cgscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cgscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cgscope.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where the web configuration and the TLS Secret are mounted. */}}
{{- define "cgscope.webConfigDir" -}}/etc/cgscope/web{{- end }}
{{- define "cgscope.tlsDir" -}}/etc/cgscope/tls{{- end }}
{{- define "cgscope.storageDir" -}}/var/lib/cgscope{{- end }}

{{/* Name of the Secret holding the web configuration; empty when there is none. */}}
{{- define "cgscope.webConfigSecret" -}}
{{- if .Values.web.existingSecret }}
{{- .Values.web.existingSecret }}
{{- else if or .Values.web.config .Values.web.tlsSecret }}
{{- printf "%s-web-config" (include "cgscope.fullname" .) }}
{{- end }}
{{- end }}

{{- define "cgscope.webConfigKey" -}}
{{- if .Values.web.existingSecret }}
{{- .Values.web.existingSecretKey }}
{{- else }}
{{- "web-config.yml" }}
{{- end }}
{{- end }}

{{/*
The web configuration the chart writes: web.config, plus a
tls_server_config naming the mounted tlsSecret when config has none.
*/}}
{{- define "cgscope.webConfig" -}}
{{- $cfg := deepCopy .Values.web.config }}
{{- if and .Values.web.tlsSecret (not (hasKey $cfg "tls_server_config")) }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "cgscope.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "cgscope.tlsDir" .)) }}
{{- $_ := set $cfg "tls_server_config" $tls }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* http or https: what Prometheus and the probes use. */}}
{{- define "cgscope.scheme" -}}
{{- if .Values.web.scheme }}
{{- .Values.web.scheme }}
{{- else if or .Values.web.tlsSecret (hasKey .Values.web.config "tls_server_config") }}
{{- "https" }}
{{- else }}
{{- "http" }}
{{- end }}
{{- end }}

{{/*
"true" when /healthz may need credentials: basic auth in web.config, or a
web configuration the chart cannot see (existingSecret). Probes then only
check that the port accepts connections.
*/}}
{{- define "cgscope.probeTCP" -}}
{{- if or .Values.web.existingSecret (hasKey .Values.web.config "basic_auth_users") }}true{{- end }}
{{- end }}

{{/*
Endpoint fields shared by the ServiceMonitor and the PodMonitor. Called
with (dict "root" $ "m" .Values.serviceMonitor).
*/}}
{{- define "cgscope.monitorEndpoint" -}}
{{- $m := .m }}
port: http-metrics
path: /metrics
scheme: {{ include "cgscope.scheme" .root }}
# cgscope's own namespace/pod/container labels name the workload of each
# cgroup; the target's labels (cgscope's pod) must not overwrite them.
honorLabels: true
{{- with $m.interval }}
interval: {{ . }}
{{- end }}
{{- with $m.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with $m.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.basicAuth }}
basicAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
relabelings:
  # The dashboards group and filter by node.
  - action: replace
    sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
  {{- with $m.relabelings }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
