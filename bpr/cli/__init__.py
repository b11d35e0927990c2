"""Command-line entry points (installed as bpr-refine, bpr-eval, bpr-build-patches, bpr-train, bpr-serve)."""
