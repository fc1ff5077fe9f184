"""Tests of the pure spec generator against spec-rules.md (S1–S32)."""
