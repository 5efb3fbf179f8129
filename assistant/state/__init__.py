"""Durable edit state: the running sums per layer, the ledger of edits and generations, its migrations, and L1 norms."""
