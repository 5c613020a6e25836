"""Figures for papers and debugging: representation projections and attention maps."""
