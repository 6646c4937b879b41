"""kinject: a knowledge-injection lab (retrieval vs fine-tuning, measured)."""

__version__ = "0.1.0"
