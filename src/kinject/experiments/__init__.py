"""Experiments: a grid of models × arms × tasks × shots × K × fine-tunings from one YAML file
(``kinject run``), its statistics, costs and tables, and the report (``kinject report``)."""
