"""gpu-carbon-exporter: GPU energy, attributed exactly, turned into emissions."""

__version__ = "0.1.0"
