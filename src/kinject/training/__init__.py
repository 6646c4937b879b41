"""The one training loop every kind of training uses."""
