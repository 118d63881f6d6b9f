"""Scans onto the model grid: canonical RAS, isotropic spacing, crop/pad around the baseline
brain, robust intensity normalisation, and rigid alignment of follow-ups to the baseline."""
