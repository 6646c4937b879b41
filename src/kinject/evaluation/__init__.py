"""Evaluation: arms, the cell runner, statistics and the run folder's tables."""
