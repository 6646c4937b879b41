"""Models: the tiny base model, its tokenizer, loading any Hugging Face causal LM, packing."""
