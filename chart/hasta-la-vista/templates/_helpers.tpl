{{/*
Names are cut at 63 characters because some Kubernetes name fields are limited to that (DNS labels).
*/}}
{{- define "hlv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hlv.fullname" -}}
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

{{- define "hlv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: immutable on a DaemonSet, so nothing version-dependent goes here. */}}
{{- define "hlv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hlv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hlv.labels" -}}
helm.sh/chart: {{ include "hlv.chart" . }}
{{ include "hlv.selectorLabels" . }}
app.kubernetes.io/version: {{ include "hlv.imageTag" . | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hlv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hlv.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hlv.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given (the digest is what gets pulled). */}}
{{- define "hlv.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "hlv.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
The Secret that holds the API secret, and its key: the user's existingSecret, or the chart's own.
*/}}
{{- define "hlv.secretName" -}}
{{- default (include "hlv.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "hlv.secretKey" -}}
{{- if .Values.secret.existingSecret }}
{{- required "secret.existingSecretKey must name the key of secret.existingSecret" .Values.secret.existingSecretKey }}
{{- else -}}
secret
{{- end }}
{{- end }}

{{/*
The chart's own secret, base64-encoded: secret.value if given, else the value already in the cluster
(so an upgrade keeps the secret that callers already use), else a new random one. `lookup` answers
nothing under `helm template` and `--dry-run`, so those show a fresh random value.
*/}}
{{- define "hlv.secretData" -}}
{{- if .Values.secret.value }}
{{- .Values.secret.value | b64enc }}
{{- else }}
{{- $current := lookup "v1" "Secret" .Release.Namespace (include "hlv.fullname" .) }}
{{- if and $current $current.data (hasKey $current.data "secret") }}
{{- index $current.data "secret" }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The port on the node. With hostNetwork the pod's ports are the node's ports, so Kubernetes requires
hostPort == containerPort; say so here instead of leaving it to an API server error.
*/}}
{{- define "hlv.hostPort" -}}
{{- $port := int .Values.config.port }}
{{- $hostPort := .Values.hostPort.port | default $port | int }}
{{- if and .Values.hostNetwork (ne $hostPort $port) }}
{{- fail (printf "hostPort.port (%d) must equal config.port (%d) when hostNetwork is true: the agent listens on the node's own port" $hostPort $port) }}
{{- end }}
{{- $hostPort }}
{{- end }}

{{/*
The grace period must outlast a drain: kubelet kills the pod at its end, and a drain started by
SIGTERM (node shutdown, scale-in) must be able to run to DRAIN_TIMEOUT and report before that.
*/}}
{{- define "hlv.terminationGracePeriodSeconds" -}}
{{- $drainTimeout := int .Values.config.drainTimeout }}
{{- $grace := .Values.terminationGracePeriodSeconds | default (add $drainTimeout 30) | int }}
{{- if le $grace $drainTimeout }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than config.drainTimeout (%d): kubelet would kill the agent in the middle of a drain" $grace $drainTimeout) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/*
Node affinity: the chart's required terms (Linux, not Fargate) are ANDed into every nodeSelectorTerm the
user gives, so user affinity narrows the placement but can never drop them. Fargate matters because the
blanket toleration would otherwise let the DaemonSet onto Fargate's virtual nodes, which cannot run it.
*/}}
{{- define "hlv.affinity" -}}
{{- $builtin := list
    (dict "key" "kubernetes.io/os" "operator" "In" "values" (list "linux"))
    (dict "key" "eks.amazonaws.com/compute-type" "operator" "NotIn" "values" (list "fargate")) }}
{{- $affinity := deepCopy (.Values.affinity | default dict) }}
{{- $nodeAffinity := get $affinity "nodeAffinity" | default dict }}
{{- $required := get $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" | default dict }}
{{- $terms := get $required "nodeSelectorTerms" | default (list dict) }}
{{- $merged := list }}
{{- range $terms }}
{{- $expressions := concat $builtin (get . "matchExpressions" | default list) }}
{{- $merged = append $merged (merge (dict "matchExpressions" $expressions) (omit . "matchExpressions")) }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $merged }}
{{- $_ = set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ = set $affinity "nodeAffinity" $nodeAffinity }}
{{- toYaml $affinity }}
{{- end }}

{{/*
The lifecycle hook the agent holds and completes: only one the user created for it. The agent refuses
the same names (agent/config.ts); saying so here fails the install instead of crash-looping the pods.
*/}}
{{- define "hlv.asgLifecycleHook" -}}
{{- $hook := .Values.config.asgLifecycleHook | default "" }}
{{- if eq (lower $hook) "auto" }}
{{- fail (printf "config.asgLifecycleHook=%s is no longer accepted: it took the group's first termination hook, which on EKS managed node groups is EKS's own Terminate-LC-Hook, and completing it cuts EKS's PodDisruptionBudget-respecting eviction of the pods short; set the name of a termination hook you created for this agent, or leave it empty to hold none" $hook) }}
{{- end }}
{{- if eq $hook "Terminate-LC-Hook" }}
{{- fail "config.asgLifecycleHook=Terminate-LC-Hook is the termination hook EKS puts on its managed node groups, and completing it cuts EKS's PodDisruptionBudget-respecting eviction of the pods short; set the name of a termination hook you created for this agent, or leave it empty to hold none" }}
{{- end }}
{{- $hook }}
{{- end }}

{{/* Environment variables the chart sets; extraEnv may not repeat them (the later one would silently win). */}}
{{- define "hlv.managedEnv" -}}
{{- list "SECRET" "SECRET_FILE" "TOKEN_AUDIENCE" "BIND_ADDRESS" "COORDINATION" "AWS_REGION" "LOGLEVEL" "CLUSTERNAME" "VPCID" "CLOUDPROVIDER" "PORT" "POLL_INTERVAL"
    "DRAIN_TIMEOUT" "DRY_RUN" "SIGTERM_DRAIN" "DEADLINE_MARGIN" "MAINTENANCE_LEAD_TIME" "REBALANCE_DRAIN"
    "EXCLUDE_NODE" "RECHECK_INTERVAL" "MAX_CONCURRENT_DRAINS" "TERMINATION_GRACE_PERIOD" "ASG_LIFECYCLE_HOOK" "LOCAL_SERVICE_DRAIN" "INVENTORY_REFRESH"
    "NODE_NAME" "POD_NAME" "POD_NAMESPACE" "HOST_IP" "WEBHOOK_URL" "WEBHOOK_HEADERS_FILE" | toJson }}
{{- end }}

{{/*
The pod's tolerations. With karpenter.enabled, none may match Karpenter's karpenter.sh/disrupted taint:
Karpenter's termination evicts, and waits for, only the pods that do not tolerate it (utils/pod
IsDrainable, IsEvictable). A toleration of every taint (operator Exists, no key) becomes one for each
taint a node that is going away, or not well, may carry; the NodePools' own taints must be listed.
*/}}
{{- define "hlv.tolerations" -}}
{{- $karpenterTaints := list "karpenter.sh/disrupted" "karpenter.sh/disruption" }}
{{- $known := list "ToBeDeletedByClusterAutoscaler" "DeletionCandidateOfClusterAutoscaler"
    "node.kubernetes.io/not-ready" "node.kubernetes.io/unreachable" "node.kubernetes.io/unschedulable"
    "node.kubernetes.io/disk-pressure" "node.kubernetes.io/memory-pressure" "node.kubernetes.io/pid-pressure"
    "node.kubernetes.io/network-unavailable" "node.kubernetes.io/out-of-service"
    "node.cloudprovider.kubernetes.io/uninitialized" "node.cloudprovider.kubernetes.io/shutdown" "karpenter.sh/unregistered" }}
{{- $out := list }}
{{- range .Values.tolerations }}
{{- if not $.Values.karpenter.enabled }}
{{- $out = append $out . }}
{{- else if has (.key | default "") $karpenterTaints }}
{{- fail (printf "tolerations tolerates %s, which karpenter.enabled must not: Karpenter would then neither evict this agent nor wait for it before terminating the instance; remove that toleration" .key) }}
{{- else if and (not .key) (eq (.operator | default "Equal") "Exists") }}
{{- range $known }}
{{- $out = append $out (dict "key" . "operator" "Exists") }}
{{- end }}
{{- else }}
{{- $out = append $out . }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* Whether pods' own tokens open the API (config.tokenAudience other than off). */}}
{{- define "hlv.podTokens" -}}
{{- if ne (lower .Values.config.tokenAudience) "off" }}true{{ end }}
{{- end }}

{{/* Where the agent reads the admin secret: the Secret mounted as a file, which kubelet updates in place. */}}
{{- define "hlv.secretDir" -}}
/etc/hasta-la-vista/secret
{{- end }}

{{/*
Numbers from values arrive as float64; print whole numbers without an exponent (1e+06) or a fraction.
*/}}
{{- define "hlv.int" -}}
{{- int64 . | toString | quote }}
{{- end }}
