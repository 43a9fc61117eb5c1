"""Metrics (one implementation of every metric) and report figures/tables."""
