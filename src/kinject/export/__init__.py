"""Exports of kinject tasks and runs to other tools (lm-evaluation-harness)."""
