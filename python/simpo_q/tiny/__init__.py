"""The tiny Gemma-2 checkpoint simpo-q builds for itself, and the data it ships."""

from simpo_q.tiny.builder import TinyConfig, build_tiny_model, cached_tiny_model

__all__ = ["TinyConfig", "build_tiny_model", "cached_tiny_model"]
