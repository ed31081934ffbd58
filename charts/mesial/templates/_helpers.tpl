{{/*
The chart's name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "mesial.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release-qualified name of the objects: "<release>-mesial", or the release name when it already says mesial.
*/}}
{{- define "mesial.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "mesial.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "mesial.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "mesial.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The four standard labels plus the component; call with (dict "ctx" $ "component" "api").
*/}}
{{- define "mesial.labels" -}}
helm.sh/chart: {{ include "mesial.chart" .ctx }}
{{ include "mesial.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: mesial
{{- end -}}

{{/*
Selector labels of one component; call with (dict "ctx" $ "component" "api").
*/}}
{{- define "mesial.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mesial.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The image reference of a component: repository@digest when global.image.digest is set (the
tag is then ignored), else repository:tag with the tag defaulting to the chart's appVersion.
*/}}
{{- define "mesial.image" -}}
{{- if .Values.global.image.digest -}}
{{- printf "%s@%s" .Values.global.image.repository .Values.global.image.digest -}}
{{- else -}}
{{- $tag := default .Chart.AppVersion .Values.global.image.tag -}}
{{- printf "%s:%s" .Values.global.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The image of aligner Jobs: aligner.tag overrides the tag (and the digest), else as mesial.image.
*/}}
{{- define "mesial.alignerImage" -}}
{{- if .Values.aligner.tag -}}
{{- printf "%s:%s" .Values.global.image.repository .Values.aligner.tag -}}
{{- else -}}
{{- include "mesial.image" . -}}
{{- end -}}
{{- end -}}

{{/*
Pod-level security context: non-root, RuntimeDefault seccomp (Pod Security "restricted").
*/}}
{{- define "mesial.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Container-level security context: read-only root, no privilege escalation, no capabilities.
*/}}
{{- define "mesial.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
Settings every component reads (MESIAL_* environment); call with (dict "ctx" $ "vaultRole" "...").
*/}}
{{- define "mesial.commonEnv" -}}
{{- $v := .ctx.Values -}}
- name: MESIAL_MODE
  value: cluster
- name: MESIAL_LOG_LEVEL
  value: {{ $v.global.logLevel | quote }}
- name: MESIAL_DATA_DIR
  value: /tmp/mesial
- name: MESIAL_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "mesial.databaseSecret" .ctx | quote }}, key: url}
- name: MESIAL_VAULT__ADDR
  value: {{ include "mesial.vaultAddr" .ctx | quote }}
- name: MESIAL_VAULT__AUTH
  value: kubernetes
- name: MESIAL_VAULT__KUBERNETES_ROLE
  value: {{ .vaultRole | quote }}
- name: MESIAL_VAULT__KUBERNETES_MOUNT
  value: {{ $v.vault.kubernetesMount | quote }}
- name: MESIAL_VAULT__SERVICE_ACCOUNT_TOKEN_PATH
  value: /var/run/secrets/mesial/vault/token
- name: MESIAL_VAULT__TRANSIT_MOUNT
  value: {{ $v.vault.transitMount | quote }}
- name: MESIAL_VAULT__KEY_ROTATION_PERIOD
  value: {{ $v.vault.keyRotationPeriod | quote }}
- name: MESIAL_VAULT__AUDIT_SIGNING_KEY
  value: {{ $v.vault.auditSigningKey | quote }}
{{- if and $v.vault.caSecret (not $v.trial.enabled) }}
- name: MESIAL_VAULT__CA_CERT
  value: /etc/mesial/vault-ca/ca.crt
{{- end }}
- name: MESIAL_STORE__ENDPOINT_URL
  value: {{ include "mesial.storeEndpoint" .ctx | quote }}
- name: MESIAL_STORE__BUCKET
  value: {{ $v.store.bucket | quote }}
- name: MESIAL_STORE__REGION
  value: {{ $v.store.region | quote }}
- name: MESIAL_STORE__ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "mesial.storeSecret" .ctx | quote }}, key: access-key}
- name: MESIAL_STORE__SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "mesial.storeSecret" .ctx | quote }}, key: secret-key}
{{- if and $v.store.caSecret (not $v.trial.enabled) }}
- name: MESIAL_STORE__CA_CERT
  value: /etc/mesial/store-ca/ca.crt
{{- end }}
{{- end -}}

{{/*
Volumes every component mounts: a writable /tmp, the projected Vault token, the CAs.
*/}}
{{- define "mesial.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: vault-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ .Values.vault.tokenAudience | quote }}
          expirationSeconds: 3600
{{- if and .Values.vault.caSecret (not .Values.trial.enabled) }}
- name: vault-ca
  secret:
    secretName: {{ .Values.vault.caSecret | quote }}
{{- end }}
{{- if and .Values.store.caSecret (not .Values.trial.enabled) }}
- name: store-ca
  secret:
    secretName: {{ .Values.store.caSecret | quote }}
{{- end }}
{{- end -}}

{{/*
Mounts of mesial.commonVolumes.
*/}}
{{- define "mesial.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: vault-token
  mountPath: /var/run/secrets/mesial/vault
  readOnly: true
{{- if and .Values.vault.caSecret (not .Values.trial.enabled) }}
- name: vault-ca
  mountPath: /etc/mesial/vault-ca
  readOnly: true
{{- end }}
{{- if and .Values.store.caSecret (not .Values.trial.enabled) }}
- name: store-ca
  mountPath: /etc/mesial/store-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/*
A tenant egress destination of values (camelCase) as the operator's settings JSON (snake_case).
*/}}
{{- define "mesial.egressJson" -}}
{{- dict "cidrs" (default list .cidrs) "namespace_selector" (default dict .namespaceSelector) "pod_selector" (default dict .podSelector) "ports" (default list .ports) | toJson -}}
{{- end -}}

{{/*
The API's base URL as the operator reaches it: operator.api.url, else the chart's own API Service
(empty when neither: the operator is then not wired to the API).
*/}}
{{- define "mesial.operatorApiUrl" -}}
{{- if .Values.operator.api.url -}}
{{- .Values.operator.api.url -}}
{{- else if .Values.api.enabled -}}
{{- printf "http://%s-api.%s.svc:%d" (include "mesial.fullname" .) .Release.Namespace (int .Values.api.service.port) -}}
{{- end -}}
{{- end -}}

{{/*
imagePullSecrets of every pod the chart creates (global.imagePullSecrets).
*/}}
{{- define "mesial.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
The ServiceAccount of aligner Jobs in each tenant namespace (the operator's default, operator.aligner_service_account).
*/}}
{{- define "mesial.alignerServiceAccount" -}}
mesial-aligner
{{- end -}}

{{/*
Trial mode (trial.enabled): the name prefix of the bundled OpenBao, SeaweedFS and PostgreSQL, and of their Secret.
*/}}
{{- define "mesial.trialName" -}}
{{- printf "%s-trial" (include "mesial.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Vault's address: vault.addr, or the trial OpenBao.
*/}}
{{- define "mesial.vaultAddr" -}}
{{- if .Values.trial.enabled -}}
{{- printf "http://%s-openbao.%s.svc:8200" (include "mesial.trialName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.vault.addr -}}
{{- end -}}
{{- end -}}

{{/*
The S3 endpoint: store.endpointUrl, or the trial SeaweedFS.
*/}}
{{- define "mesial.storeEndpoint" -}}
{{- if .Values.trial.enabled -}}
{{- printf "http://%s-seaweedfs.%s.svc:8333" (include "mesial.trialName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.store.endpointUrl -}}
{{- end -}}
{{- end -}}

{{/*
Secrets of the database URL (key url), the store credentials (access-key, secret-key) and the link key (link-secret).
*/}}
{{- define "mesial.databaseSecret" -}}
{{- if .Values.trial.enabled }}{{ include "mesial.trialName" . }}{{ else }}{{ .Values.database.urlSecret }}{{ end -}}
{{- end -}}
{{- define "mesial.storeSecret" -}}
{{- if .Values.trial.enabled }}{{ include "mesial.trialName" . }}{{ else }}{{ .Values.store.credentialsSecret }}{{ end -}}
{{- end -}}
{{- define "mesial.linkSecret" -}}
{{- if .Values.trial.enabled }}{{ include "mesial.trialName" . }}{{ else }}{{ .Values.api.linkSecret }}{{ end -}}
{{- end -}}
