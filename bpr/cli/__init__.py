"""Command-line entry points (installed as bpr-refine, bpr-eval, bpr-build-patches, bpr-train).

bpr-serve lives with the service (service/cli.py): nothing under bpr/ imports service."""
