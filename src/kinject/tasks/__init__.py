"""Multiple-choice tasks: the item type, loaders for JSONL and MMLU CSV, and prompt building."""
