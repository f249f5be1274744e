"""Normalizing Trajectory Models (arXiv 2605.08078) and the flow-matching core they build on."""
