"""Unit tests of the local bundle writer."""
