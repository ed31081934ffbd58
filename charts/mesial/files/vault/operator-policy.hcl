# Vault policy of the Mesial operator (Kubernetes-auth role `mesial-operator`).
# It manages tenant keys, tenant policies and tenant login roles, and nothing else.

# Tenant transit keys: create, configure (rotation, deletion_allowed), rotate, read, delete.
path "transit/keys/org-*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "transit/keys/org-*/rotate" {
  capabilities = ["update"]
}
path "transit/keys/org-*/config" {
  capabilities = ["update"]
}
# Key fingerprints (HMAC over a fixed label) and the shred proof (a probe data key, then a failed unwrap).
path "transit/hmac/org-*" {
  capabilities = ["update"]
}
path "transit/datakey/plaintext/org-*" {
  capabilities = ["update"]
}
path "transit/decrypt/org-*" {
  capabilities = ["update"]
}
# One policy and one Kubernetes-auth role per tenant, named after it.
path "sys/policies/acl/mesial-org-*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "auth/kubernetes/role/mesial-org-*" {
  capabilities = ["create", "read", "update", "delete"]
}
# Whether the Kubernetes auth method is mounted (it is configured by the platform team).
path "sys/auth" {
  capabilities = ["read"]
}
