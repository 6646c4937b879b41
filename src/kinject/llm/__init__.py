"""Chat models (an OpenAI-compatible endpoint or a local model) and the prompts that build
datasets with them."""
