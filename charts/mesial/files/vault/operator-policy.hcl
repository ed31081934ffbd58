{{- $transit := .Values.vault.transitMount -}}
{{- $auth := .Values.vault.kubernetesMount -}}
# Vault policy of the Mesial operator (Kubernetes-auth role `{{ .Values.operator.vaultRole }}`), rendered
# by the chart from vault.transitMount, vault.kubernetesMount, vault.tokenAudience and
# vault.alignerPolicy (tests/policies runs every call of the operator with a token holding exactly
# this policy). It manages tenant keys and tenant login roles, writes no policy and needs no sys/
# path. What it can still do is in docs/operator.md ("Vault powers").

# Tenant keys (named as the tenant namespace, mesial-org-<name>): create (fixed type, never exportable), read, rotate, set the rotation period,
# allow deletion and delete (crypto-shredding). The glob also covers keys/mesial-org-<name>/config
# and /rotate; the parameters are limited to these for all of them.
path "{{ $transit }}/keys/mesial-org-*" {
  capabilities = ["read", "update", "delete"]
  allowed_parameters = {
    "type" = ["aes256-gcm96"]
    "exportable" = [false]
    "allow_plaintext_backup" = [false]
    "auto_rotate_period" = []
    "deletion_allowed" = [true]
  }
}
# Key fingerprints (HMAC over a fixed label) and the shred proof (a probe data key, then a failed unwrap).
path "{{ $transit }}/hmac/mesial-org-*" {
  capabilities = ["update"]
}
path "{{ $transit }}/datakey/plaintext/mesial-org-*" {
  capabilities = ["update"]
}
path "{{ $transit }}/decrypt/mesial-org-*" {
  capabilities = ["update"]
}
# One login role per tenant, named after it. Vault compares list parameters as whole values
# and globs only strings, so the operator sends single names as strings: the role can only
# bind the ServiceAccount mesial-aligner, in one namespace mesial-org-<...>, to the one fixed
# aligner policy (files/vault/aligner-policy.hcl, templated on the login's namespace), with the
# chart's token audience and a one-hour token. A comma would name a second namespace: refused.
path "auth/{{ $auth }}/role/mesial-org-*" {
  capabilities = ["create", "read", "update", "delete"]
  allowed_parameters = {
    "bound_service_account_names" = ["mesial-aligner"]
    "bound_service_account_namespaces" = ["mesial-org-*"]
    "policies" = [{{ .Values.vault.alignerPolicy | quote }}]
    "audience" = [{{ .Values.vault.tokenAudience | quote }}]
    "ttl" = ["1h"]
  }
  denied_parameters = {
    "bound_service_account_namespaces" = ["*,*"]
    "policies" = ["*,*"]
  }
}
