"""Collecting: talking to the server(s) and keeping what they answer (prompts, samples, scores, checkpoints)."""
