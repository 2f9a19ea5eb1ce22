"""ctr_eval: the MM-CTR challenge's fixed DIN evaluator and a TransAct+DCNv2 model.

Reads the challenge's files (or an (N+1, 128) float32 embedding table); never imports
mmembed.
"""
__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
