{{/* Labels on every object of the chart. */}}
{{- define "cni.labels" -}}
app.kubernetes.io/name: ambient-cni
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambient-mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The container image: <hub>/<repository>:<tag or appVersion>. */}}
{{- define "cni.image" -}}
{{- printf "%s/%s:%s" .Values.image.hub .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
