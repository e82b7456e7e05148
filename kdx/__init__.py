"""The `kdx` command: the thin layer that composes `explorer` (the Ray-free core), `trainables` (the
Ray side) and `analysis` (MLflow -> answers). It holds no business logic."""
