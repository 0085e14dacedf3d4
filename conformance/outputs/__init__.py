"""Outputs: results on disk and their metadata, the HTML report and its plots, the upgrade diff and baselines."""
