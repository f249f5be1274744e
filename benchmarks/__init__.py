"""Worlds, suites, runner and records of the ntm-bench harness."""
