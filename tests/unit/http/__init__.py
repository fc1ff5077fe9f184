"""Unit tests of the HTTP endpoints and the readiness state."""
