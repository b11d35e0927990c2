"""Command-line entry points (installed as bpr-refine, bpr-eval, bpr-build-patches, bpr-train,
and for judging and shipping a model bpr-train-gate, bpr-package and bpr-dev-table).

bpr-serve lives with the service (service/cli.py): nothing under bpr/ imports service."""
