"""Tests of the patients room: identity, consolidated history, search."""
