"""The audit collector: per-tenant hash chains, signed checkpoints, exports."""
