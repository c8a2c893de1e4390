"""Tests of fleettwin.live."""
