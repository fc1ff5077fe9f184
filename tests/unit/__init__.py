"""Unit tests: the pure parts of winspec, no engine and no network."""
