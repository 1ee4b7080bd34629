"""Presenting results: figures and reports, made from saved data only."""
