# Vault policy of the Mesial API (Kubernetes-auth role `mesial-api`).
# It seals and opens tenant objects and signs audit checkpoints; it cannot create,
# configure, export or delete a key.

path "transit/datakey/plaintext/org-*" {
  capabilities = ["update"]
}
path "transit/decrypt/org-*" {
  capabilities = ["update"]
}
path "transit/rewrap/org-*" {
  capabilities = ["update"]
}
path "transit/keys/org-*" {
  capabilities = ["read"]
}
path "transit/hmac/org-*" {
  capabilities = ["update"]
}
# Audit checkpoints: sign with the audit key, read its public keys for exports.
path "transit/sign/mesial-audit" {
  capabilities = ["update"]
}
path "transit/verify/mesial-audit" {
  capabilities = ["update"]
}
path "transit/keys/mesial-audit" {
  capabilities = ["read"]
}
