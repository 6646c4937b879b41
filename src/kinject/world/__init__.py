"""The synthetic knowledge world: the embedded default dataset (see DESIGN.md)."""
