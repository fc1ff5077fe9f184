"""Helpers shared by the test harness: waiting for a condition, the fixtures' errors and
child processes."""
