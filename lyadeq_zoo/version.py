"""The zoo's version; checkpoints record it and refuse configs from an incompatible major version."""

__version__ = "0.1.0"
