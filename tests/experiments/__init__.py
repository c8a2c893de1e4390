"""Tests of the experiments (fleettwin.experiments)."""
