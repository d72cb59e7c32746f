{{/*
Names, labels, images, security contexts and the connection settings shared by the templates.
*/}}

{{- define "churnops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix; kept at 40 characters so every suffix fits the 63-character limit. */}}
{{- define "churnops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "churnops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable over upgrades (never the chart version). Call with (dict "ctx" $ "component" "operator"). */}}
{{- define "churnops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "churnops.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of an object. Call with (dict "ctx" $ "component" "operator"). */}}
{{- define "churnops.labels" -}}
helm.sh/chart: {{ include "churnops.chart" .ctx }}
{{ include "churnops.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: churnops
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* An image reference: repository@digest when a digest is given, else repository:tag. */}}
{{- define "churnops.image" -}}
{{- if .digest }}{{ .repository }}@{{ .digest }}{{ else }}{{ .repository }}:{{ .tag }}{{ end }}
{{- end }}

{{/* An image's pull policy: its own pullPolicy, else imagePullPolicy. Call with (dict "ctx" $ "image" <images.x>). */}}
{{- define "churnops.pullPolicy" -}}
{{- .image.pullPolicy | default .ctx.Values.imagePullPolicy }}
{{- end }}

{{- define "churnops.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod Security Standard "restricted", pod level. */}}
{{- define "churnops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 10001 }}
runAsGroup: {{ .uid | default 10001 }}
fsGroup: {{ .uid | default 10001 }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod Security Standard "restricted", container level; the root filesystem is read-only (writable paths are emptyDirs). */}}
{{- define "churnops.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "churnops.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.name }}{{ .Values.operator.serviceAccount.name }}{{ else }}{{ include "churnops.fullname" . }}-operator{{ end }}
{{- end }}

{{/* Endpoints: the configured one, else the bundled service, else a clear failure. */}}
{{- define "churnops.mlflowUrl" -}}
{{- if .Values.endpoints.mlflow }}{{ .Values.endpoints.mlflow }}
{{- else if .Values.mlflow.bundled.enabled }}http://{{ include "churnops.fullname" . }}-mlflow.{{ .Release.Namespace }}.svc:5000
{{- else }}{{ fail "endpoints.mlflow is required unless mlflow.bundled.enabled is true" }}
{{- end }}
{{- end }}

{{- define "churnops.redisHost" -}}
{{- if .Values.featureStore.redis.host }}{{ .Values.featureStore.redis.host }}
{{- else if .Values.redis.bundled.enabled }}{{ include "churnops.fullname" . }}-redis.{{ .Release.Namespace }}.svc
{{- else }}{{ fail "featureStore.redis.host is required unless redis.bundled.enabled is true" }}
{{- end }}
{{- end }}

{{- define "churnops.postgresHost" -}}
{{- if .Values.featureStore.postgresql.host }}{{ .Values.featureStore.postgresql.host }}
{{- else if .Values.postgresql.bundled.enabled }}{{ include "churnops.fullname" . }}-postgresql.{{ .Release.Namespace }}.svc
{{- else }}{{ fail "featureStore.postgresql.host is required unless postgresql.bundled.enabled is true" }}
{{- end }}
{{- end }}

{{/*
PostgreSQL's CA bundle (featureStore.postgresql.caBundle): its path in every client pod, empty when none is
given. sslmode verify-ca / verify-full without one fails here: libpq would look for ~/.postgresql/root.crt,
which no pod has, and refuse every connection.
*/}}
{{- define "churnops.postgresCaDir" -}}/etc/churnops/postgresql-ca{{- end }}
{{- define "churnops.postgresCaPath" -}}
{{- $pg := .Values.featureStore.postgresql -}}
{{- $ca := $pg.caBundle -}}
{{- if or $ca.configMap $ca.secret }}{{ include "churnops.postgresCaDir" . }}/{{ $ca.key }}
{{- else if has $pg.sslmode (list "verify-ca" "verify-full") }}
{{- fail (printf "featureStore.postgresql.sslmode %s needs featureStore.postgresql.caBundle (configMap or secret, and key) holding the server's CA bundle" $pg.sslmode) }}
{{- end }}
{{- end }}

{{/* The CA bundle's volume and mount (nothing without a bundle); call with the root context. */}}
{{- define "churnops.postgresCaVolume" -}}
{{- $ca := .Values.featureStore.postgresql.caBundle -}}
{{- if $ca.configMap }}
- name: postgresql-ca
  configMap:
    name: {{ $ca.configMap }}
    items: [{key: {{ $ca.key | quote }}, path: {{ $ca.key | quote }}}]
{{- else if $ca.secret }}
- name: postgresql-ca
  secret:
    secretName: {{ $ca.secret }}
    items: [{key: {{ $ca.key | quote }}, path: {{ $ca.key | quote }}}]
{{- end }}
{{- end }}
{{- define "churnops.postgresCaMount" -}}
{{- if include "churnops.postgresCaPath" . }}
- name: postgresql-ca
  mountPath: {{ include "churnops.postgresCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* libpq connection string without the password (libpq reads PGPASSWORD from the environment). */}}
{{- define "churnops.postgresDsn" -}}
{{- $pg := .Values.featureStore.postgresql -}}
host={{ include "churnops.postgresHost" . }} port={{ $pg.port }} dbname={{ $pg.database }} user={{ $pg.user }} sslmode={{ $pg.sslmode }}{{ with include "churnops.postgresCaPath" . }} sslrootcert={{ . }}{{ end }} connect_timeout=10
{{- end }}

{{/*
MLflow credentials of one client (operator, predictor or pipeline) when the bundled MLflow authenticates:
the MLflow client and the operator read MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
Call with (dict "ctx" $ "who" "operator").
*/}}
{{- define "churnops.mlflowAuthEnv" -}}
{{- $auth := .ctx.Values.mlflow.bundled.auth -}}
{{- if and .ctx.Values.mlflow.bundled.enabled $auth.enabled (not .ctx.Values.endpoints.mlflow) }}
- name: MLFLOW_TRACKING_USERNAME
  value: {{ index $auth.users .who | quote }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .ctx.Values.credentials.existingSecret }}
      key: {{ index $auth.passwordKeys .who }}
{{- end }}
{{- end }}

{{/*
Environment of every ChurnOps process that reads the stores and the registry: feature_store.cluster.yaml's
CHURNOPS_* variables, PGPASSWORD for libpq, MLflow's tracking URI. Passwords come from credentials.existingSecret.
*/}}
{{- define "churnops.storeEnv" -}}
{{- $pg := .Values.featureStore.postgresql -}}
{{- $cred := .Values.credentials -}}
- name: CHURNOPS_FEAST_PROJECT
  value: {{ .Values.featureStore.project | quote }}
- name: CHURNOPS_PG_HOST
  value: {{ include "churnops.postgresHost" . | quote }}
- name: CHURNOPS_PG_PORT
  value: {{ $pg.port | quote }}
- name: CHURNOPS_PG_DATABASE
  value: {{ $pg.database | quote }}
- name: CHURNOPS_PG_USER
  value: {{ $pg.user | quote }}
- name: CHURNOPS_PG_SCHEMA
  value: {{ $pg.schema | quote }}
- name: CHURNOPS_PG_SSLMODE
  value: {{ $pg.sslmode | quote }}
- name: PGSSLMODE  # libpq's default for connections that name no sslmode (Feast's SQL registry)
  value: {{ $pg.sslmode | quote }}
{{- with include "churnops.postgresCaPath" . }}
- name: PGSSLROOTCERT
  value: {{ . | quote }}
{{- end }}
- name: CHURNOPS_PG_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $cred.existingSecret }}
      key: {{ $cred.postgresPasswordKey }}
- name: PGPASSWORD
  value: $(CHURNOPS_PG_PASSWORD)
{{- if $cred.redisPasswordKey }}
- name: CHURNOPS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $cred.existingSecret }}
      key: {{ $cred.redisPasswordKey }}
- name: CHURNOPS_REDIS
  value: "{{ include "churnops.redisHost" . }}:{{ .Values.featureStore.redis.port }},password=$(CHURNOPS_REDIS_PASSWORD){{ if .Values.featureStore.redis.tls }},ssl=true{{ end }}"
{{- else }}
- name: CHURNOPS_REDIS
  value: "{{ include "churnops.redisHost" . }}:{{ .Values.featureStore.redis.port }}{{ if .Values.featureStore.redis.tls }},ssl=true{{ end }}"
{{- end }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "churnops.mlflowUrl" . | quote }}
{{- end }}

{{/* The namespaces the chart's NetworkPolicies and PeerAuthentications cover: the release's and the serving ones. */}}
{{- define "churnops.allNamespaces" -}}
{{- $all := list .Release.Namespace }}
{{- range .Values.serving.namespaces }}{{ if not (has . $all) }}{{ $all = append $all . }}{{ end }}{{ end }}
{{- join "," $all }}
{{- end }}

{{- /* HTTPS egress outside the cluster (networkPolicy.httpsEgress): S3, STS, a JWKS endpoint. Nothing when no CIDR is given. */}}
{{- define "churnops.httpsEgress" -}}
{{- $h := .Values.networkPolicy.httpsEgress }}
{{- if $h.cidrs }}
- to:
    {{- range $h.cidrs }}
    - ipBlock:
        cidr: {{ . }}
        {{- with $h.except }}
        except: {{ toJson . }}
        {{- end }}
    {{- end }}
  ports:
    - {protocol: TCP, port: 443}
{{- end }}
{{- end }}

{{- /* Egress to the managed services outside the cluster (RDS, ElastiCache, an external MLflow, S3 endpoints). */}}
{{- define "churnops.externalEgress" -}}
{{- range .Values.networkPolicy.externalServiceCIDRs }}
- to:
    - ipBlock:
        cidr: {{ . }}
{{- end }}
{{- end }}

{{/* The DaskCluster of the engine; the operator names its scheduler Service "<name>-scheduler". */}}
{{- define "churnops.daskCluster" -}}
{{- printf "%s-dask" (include "churnops.fullname" .) }}
{{- end }}

{{/* The engine's scheduler as pipeline steps reach it (the address the operator gives its workers). */}}
{{- define "churnops.daskSchedulerAddress" -}}
{{- printf "tcp://%s-scheduler.%s.svc.cluster.local:8786" (include "churnops.daskCluster" .) .Release.Namespace }}
{{- end }}
