"""Evaluation: the paper protocol, the multi-dataset protocol, baselines and reports."""
