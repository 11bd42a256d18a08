{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "slatedb-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the prefix of every resource name. */}}
{{- define "slatedb-operator.fullname" -}}
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

{{- define "slatedb-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slatedb-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slatedb-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slatedb-operator.labels" -}}
helm.sh/chart: {{ include "slatedb-operator.chart" . }}
{{ include "slatedb-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: slatedb-operator
{{- end }}

{{- define "slatedb-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slatedb-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "slatedb-operator.copyJobServiceAccountName" -}}
{{- default (printf "%s-copy" (include "slatedb-operator.fullname" .)) .Values.copyJobs.serviceAccount.name }}
{{- end }}

{{- define "slatedb-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the operator runs with --leader-election: asked for, or forced by more than one replica. */}}
{{- define "slatedb-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "slatedb-operator.leaseName" -}}
{{- default (include "slatedb-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "slatedb-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
--lease-grace-seconds: the lease manager renews this many seconds before the lease expires. client-go's
renewDeadline maps to leaseDuration - renewDeadline; retryPeriod is its lower bound, so that at least one
retry fits in the renewal window.
*/}}
{{- define "slatedb-operator.leaseGrace" -}}
{{- $le := .Values.leaderElection }}
{{- $duration := int $le.leaseDuration }}
{{- $grace := max (sub $duration (int $le.renewDeadline)) (int $le.retryPeriod) }}
{{- if ge (int $le.renewDeadline) $duration }}
{{- fail (printf "leaderElection.renewDeadline (%d) must be smaller than leaderElection.leaseDuration (%d)" (int $le.renewDeadline) $duration) }}
{{- end }}
{{- if ge (int $grace) $duration }}
{{- fail (printf "leaderElection.retryPeriod (%d) must be smaller than leaderElection.leaseDuration (%d)" (int $le.retryPeriod) $duration) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* The operator's permissions on the namespaced resources it reconciles (conventions §13). */}}
{{- define "slatedb-operator.operatorRules" -}}
# Checkpoints: created and pruned by their schedules.
- apiGroups: ["slatedb.io"]
  resources: ["databasecheckpoints"]
  verbs: ["get", "list", "watch", "patch", "update", "create", "delete"]
- apiGroups: ["slatedb.io"]
  resources: ["databasecheckpointschedules"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["slatedb.io"]
  resources: ["databaseclones"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
- apiGroups: ["slatedb.io"]
  resources: ["databasecopies"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["slatedb.io"]
  resources: ["databasecheckpoints/status", "databasecheckpointschedules/status", "databaseclones/status", "databasecopies/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["slatedb.io"]
  resources: ["databasecheckpoints/finalizers", "databasecheckpointschedules/finalizers", "databaseclones/finalizers", "databasecopies/finalizers"]
  verbs: ["update"]
# The connection details of each Ready clone, owned by it.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if ne .Values.inlineStores "Deny" }}
# The Secrets inline stores name: read one by one, never listed or watched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}
