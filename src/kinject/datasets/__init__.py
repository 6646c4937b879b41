"""Datasets built with a chat model from a knowledge base: multiple-choice questions (the
paper's procedure) and paraphrases for FT-par, each resumable after a kill."""
