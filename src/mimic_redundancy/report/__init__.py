"""Figures and the preset comparison, drawn from the tables and NPZ files the analyses wrote. Imports core and
analysis."""
