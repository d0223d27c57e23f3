"""Configs, the end-to-end pipeline, results and reports."""
