"""mmembed: multimodal item embeddings for recommendation.

The public names are listed here; importing the package has no side effects and does
not import torch.
"""
__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
