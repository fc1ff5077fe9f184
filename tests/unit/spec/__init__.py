"""Tests of the pure spec generator against the rules S1–S32 of controller/RULES.md."""
