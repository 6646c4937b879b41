"""Scoring: log-likelihood of continuations, with lm-evaluation-harness semantics."""
