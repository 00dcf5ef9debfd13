"""Rerunnable benchmarks; each prints JSON lines with ratios against a baseline of the same run."""
