"""The Snakemake side: the config and its checks, and the stage functions that scripts/ call (one per rule). The only
layer that knows every other one, except tools."""
