"""Reuse studies: grids of pretraining and fine-tuning runs, and their aggregation."""
