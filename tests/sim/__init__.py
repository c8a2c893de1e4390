"""Tests of fleettwin.sim."""
