"""The LDA engine: a vLLM plugin that serves a model pair with per-request logit diff amplification.

Import `LDAModelPair` from `engine.library` for scripts; this package import stays light (no vLLM).
"""
