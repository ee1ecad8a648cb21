"""Evals: trace replay through the real scheduler, synthetic lab workloads, reports."""
