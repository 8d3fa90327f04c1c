"""Data sets: synthetic cell images drawn on the fly, and known public data sets to fetch."""

from biounet.datasets.synthetic import SyntheticConfig, generate_dataset, generate_sample

__all__ = ["SyntheticConfig", "generate_dataset", "generate_sample"]
