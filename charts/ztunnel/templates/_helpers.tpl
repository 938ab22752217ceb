{{/* Labels on every object of the chart. */}}
{{- define "ztunnel.labels" -}}
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambient-mesh
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The container image: <hub>/<repository>:<tag or appVersion>. */}}
{{- define "ztunnel.image" -}}
{{- printf "%s/%s:%s" .Values.image.hub .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* istiod's service address: istiod[-<revision>].<istioNamespace>.svc:15012. */}}
{{- define "ztunnel.istiodAddress" -}}
{{- $svc := "istiod" }}
{{- if .Values.revision }}{{ $svc = printf "istiod-%s" .Values.revision }}{{ end }}
{{- printf "%s.%s.svc:15012" $svc .Values.istioNamespace }}
{{- end }}
