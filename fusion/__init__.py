"""Fusion gateway: serve several models as one service and compose them into pipelines.

This package is model-agnostic: it never imports torch, and imports ray only in
``fusion.app`` and ``fusion.ingress`` (the Serve boundary).
"""

__version__ = "0.1.0"
