"""Insight: feature-map grids (and, from other modules, γ histograms, sensitivity and channel plots)."""
