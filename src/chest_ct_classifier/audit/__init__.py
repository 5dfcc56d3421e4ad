"""The audit trail: what was answered, with which model, in an append-only, hash-chained log."""
