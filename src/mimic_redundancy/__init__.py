"""Probes of temporal redundancy in mimic-video's flow-matching action sampling.

Modules that cheap pipeline stages use (config, io, metrics, plots) never import torch.
"""
