{{- define "plexus-node.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "plexus-node.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "plexus-node.selectorLabels" -}}
app.kubernetes.io/name: {{ include "plexus-node.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "plexus-node.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "plexus-node.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node
app.kubernetes.io/part-of: plexus
plexus/node-id: {{ .Values.config.id | quote }}
{{- end -}}

{{- define "plexus-node.tomlStrings" -}}
[{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ $v | toString | quote }}{{ end -}}]
{{- end -}}
