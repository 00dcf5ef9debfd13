"""interp: minimal-pair activation analysis of Llama-family models with TransformerLens.

Feed a model two sentences that differ in one token, record activations at chosen hook points, and
measure how much each component changes, against null baselines, with the model's own
error-detection signal and causal checks. See README.md.
"""

__version__ = "0.1.0"
