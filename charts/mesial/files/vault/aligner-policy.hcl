{{- $transit := .Values.vault.transitMount -}}
{{- $accessor := .Values.vault.kubernetesMountAccessor | default "KUBERNETES_MOUNT_ACCESSOR" -}}
{{- $ns := printf "{{identity.entity.aliases.%s.metadata.service_account_namespace}}" $accessor -}}
# Vault policy `{{ .Values.vault.alignerPolicy }}` of every tenant's aligner Jobs: one fixed policy,
# written by the platform team, granted by each tenant's login role `mesial-org-<name>` (which the
# operator writes, bound to the ServiceAccount mesial-aligner of that tenant's namespace only).
# The key is named after the namespace of the ServiceAccount the Job logged in with (Kubernetes
# auth's alias metadata `service_account_namespace`, set by Vault from the TokenReview, not by the
# caller), so a Job's token reaches its own tenant's key only, and a token without a Kubernetes
# login resolves to nothing. A Job makes data keys (its results) and unwraps them (its inputs):
# no encrypt, rewrap, key metadata, export or deletion. The operator writes no policy.
{{- if not .Values.vault.kubernetesMountAccessor }}
# Replace KUBERNETES_MOUNT_ACCESSOR with the accessor of the auth method at `{{ .Values.vault.kubernetesMount }}`
# (`vault auth list`), or set vault.kubernetesMountAccessor (docs/install.md).
{{- end }}
path "{{ $transit }}/datakey/plaintext/{{ $ns }}" {
  capabilities = ["update"]
}
path "{{ $transit }}/decrypt/{{ $ns }}" {
  capabilities = ["update"]
}
