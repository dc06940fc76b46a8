{{/* The base of every object's name: the release name when it already says respublica. */}}
{{- define "respublica.fullname" -}}
{{- if contains "respublica" .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-respublica" .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select one component's pods: (list $ "gateway"). */}}
{{- define "respublica.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: respublica-{{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end -}}

{{/* Every object's labels: (list $ "gateway"). */}}
{{- define "respublica.labels" -}}
{{ include "respublica.selectorLabels" . }}
app.kubernetes.io/part-of: respublica
app.kubernetes.io/version: {{ (index . 0).Chart.AppVersion | quote }}
{{- end -}}

{{/* An image reference: (dict "image" .Values.image "root" $). global.imageRegistry wins. */}}
{{- define "respublica.image" -}}
{{- $image := .image -}}
{{- $registry := .root.Values.global.imageRegistry | default $image.registry -}}
{{- $ref := $image.repository -}}
{{- if $registry -}}{{- $ref = printf "%s/%s" (trimSuffix "/" $registry) $image.repository -}}{{- end -}}
{{- $tag := $image.tag | default .root.Chart.AppVersion -}}
{{- if $tag -}}{{- $ref = printf "%s:%s" $ref $tag -}}{{- end -}}
{{- if $image.digest -}}{{- $ref = printf "%s@%s" $ref $image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* imagePullSecrets of the chart's pods. */}}
{{- define "respublica.pullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level hardening: (dict "user" 65532 "group" 65532). */}}
{{- define "respublica.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ int .user }}
  runAsGroup: {{ int .group }}
  fsGroup: {{ int .group }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Container-level hardening: nothing but the process, read-only, no privilege to gain. */}}
{{- define "respublica.containerSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  privileged: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* How many gateway processes can run at once: what decides whether quotas need Redis. */}}
{{- define "respublica.gatewayProcesses" -}}
{{- $g := .Values.gateway -}}
{{- if $g.autoscaling.enabled -}}{{- int $g.autoscaling.maxReplicas -}}{{- else -}}{{- int $g.replicas -}}{{- end -}}
{{- end -}}

{{/* The least number of gateway pods: whether a PodDisruptionBudget makes sense. */}}
{{- define "respublica.gatewayMinPods" -}}
{{- $g := .Values.gateway -}}
{{- if $g.autoscaling.enabled -}}{{- int $g.autoscaling.minReplicas -}}{{- else -}}{{- int $g.replicas -}}{{- end -}}
{{- end -}}

{{/* Whether quotas live in Redis (the chart's or an external one). */}}
{{- define "respublica.quotaInRedis" -}}
{{- if or .Values.redis.enabled .Values.redis.external.url .Values.redis.external.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The combinations that cannot work, refused with what to do (a `fail` stops the render). */}}
{{- define "respublica.validate" -}}
{{- $processes := int (include "respublica.gatewayProcesses" .) -}}
{{- $external := or .Values.redis.external.url .Values.redis.external.existingSecret -}}
{{- if and .Values.redis.enabled $external -}}
{{- fail "redis: set either redis.enabled (the chart's Redis) or redis.external (your own), not both" -}}
{{- end -}}
{{- if and .Values.redis.external.url .Values.redis.external.existingSecret -}}
{{- fail "redis.external: set either url or existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.gateway.enabled (gt $processes 1) (not (include "respublica.quotaInRedis" .)) -}}
{{- fail (printf "gateway: up to %d gateway pods would each count quotas on their own; quotas are exact only in one shared Redis: set redis.enabled=true (the chart's) or redis.external.url / redis.external.existingSecret (your own), or run one pod (gateway.replicas=1, gateway.autoscaling.enabled=false)" $processes) -}}
{{- end -}}
{{- if and .Values.gateway.enabled .Values.gateway.database.sqlite.enabled (gt $processes 1) -}}
{{- fail (printf "gateway.database.sqlite: SQLite serves one gateway pod, but up to %d may run: use PostgreSQL (gateway.database.existingSecret), or gateway.replicas=1 with gateway.autoscaling.enabled=false" $processes) -}}
{{- end -}}
{{- if and .Values.gateway.enabled (not .Values.gateway.database.sqlite.enabled) (not .Values.gateway.database.existingSecret) -}}
{{- fail "gateway.database: name the existing Secret holding the PostgreSQL URL (gateway.database.existingSecret), or enable gateway.database.sqlite for a single pod" -}}
{{- end -}}
{{- if and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.minReplicas) (int .Values.gateway.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling: minReplicas is greater than maxReplicas" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not .Values.gateway.enabled) -}}
{{- fail "serviceMonitor: it scrapes the gateway, which is disabled (gateway.enabled=false)" -}}
{{- end -}}
{{- end -}}

{{/* A label map as key=value,key2=value2 (sorted), the operator's *_LABELS format. */}}
{{- define "respublica.labelList" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
