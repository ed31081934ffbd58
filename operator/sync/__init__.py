"""Reconciliation logic behind the handlers: one module per owned kind, plain async functions."""
