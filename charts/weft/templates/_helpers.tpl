{{/* Labels on every object of the release. */}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* What selects the control plane's pods. */}}
{{- define "weft.selector" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "weft.serviceAccount" -}}
{{ .Values.serviceAccount.name | default "weft-control-plane" }}
{{- end -}}

{{- define "weft.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The webhook configuration's name (cluster-scoped: one per release namespace). */}}
{{- define "weft.webhookName" -}}
weft-sidecar-injector-{{ .Release.Namespace }}
{{- end -}}

{{/* native or classic, resolving auto by the cluster's version. */}}
{{- define "weft.sidecarMode" -}}
{{- if eq .Values.injector.sidecarMode "auto" -}}
{{- if semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version -}}native{{- else -}}classic{{- end -}}
{{- else -}}
{{ .Values.injector.sidecarMode }}
{{- end -}}
{{- end -}}

{{- define "weft.webhookSecret" -}}
weft-webhook-tls
{{- end -}}
