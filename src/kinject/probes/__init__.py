"""Probes: test data built from a corpus to ask what a model learned from it (issue 9's
renamed entities: is Bob, once Romeo, still the one who loves Juliet?)."""
