"""Task losses, loss weighting, gradient surgery and task-affinity measurement."""
