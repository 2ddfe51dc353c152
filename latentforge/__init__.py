"""latentforge: raw video and images -> training-ready latent and embedding shards on Ray Data."""

__version__ = "0.1.0"
