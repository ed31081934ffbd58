{{- $transit := .Values.vault.transitMount -}}
{{- $audit := .Values.vault.auditSigningKey -}}
# Vault policy of the Mesial API (Kubernetes-auth role `{{ .Values.api.vaultRole }}`), rendered by
# the chart from vault.transitMount and vault.auditSigningKey (tests/policies runs every call
# of the API with a token holding exactly this policy).
# It seals and opens tenant objects, creates a new tenant's key (never exportable, rotation
# period only) and signs audit checkpoints. It cannot delete, export, back up or otherwise
# configure a key, and needs no sys/ path.

# Tenant keys: read (versions, fingerprint); create (POST, an `update`) with the fixed type
# and the rotation period; `update` also covers keys/mesial-org-<name>/config and /rotate, limited to
# these parameters (so no deletion_allowed, min_decryption_version or exportable=true).
path "{{ $transit }}/keys/mesial-org-*" {
  capabilities = ["read", "update"]
  allowed_parameters = {
    "type" = ["aes256-gcm96"]
    "exportable" = [false]
    "allow_plaintext_backup" = [false]
    "auto_rotate_period" = []
  }
}
# Data keys: new ones (plaintext + wrapped), unwrap, rewrap to the newest key version.
path "{{ $transit }}/datakey/plaintext/mesial-org-*" {
  capabilities = ["update"]
}
path "{{ $transit }}/decrypt/mesial-org-*" {
  capabilities = ["update"]
}
path "{{ $transit }}/rewrap/mesial-org-*" {
  capabilities = ["update"]
}
# Key fingerprints: an HMAC over a fixed label.
path "{{ $transit }}/hmac/mesial-org-*" {
  capabilities = ["update"]
}
# Audit checkpoints: create the ed25519 key once (idempotent), sign, verify, read its public keys.
path "{{ $transit }}/keys/{{ $audit }}" {
  capabilities = ["read", "update"]
  allowed_parameters = {
    "type" = ["ed25519"]
    "exportable" = [false]
  }
}
path "{{ $transit }}/sign/{{ $audit }}" {
  capabilities = ["update"]
}
path "{{ $transit }}/verify/{{ $audit }}" {
  capabilities = ["update"]
}
