"""Benchmarks for pipeline-db (`make bench`): scripts, not tests.

Every figure is reported beside a baseline measured in the same run (the
machines are shared and noisy): ratios mean more than absolute times.
"""
