"""One router per concern: refine, segment, health (healthz/readyz), models, metrics."""
