"""Inference only: model loading, generation and the worker that runs it. Never touches HTTP."""
