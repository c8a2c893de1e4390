"""Tests of fleettwin.models."""
