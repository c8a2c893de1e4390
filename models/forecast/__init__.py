"""Workload forecasters (issue: forecasting)."""
