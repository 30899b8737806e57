"""Fusion gateway: serve several models as one service and compose them into pipelines.

The packages follow a request's path: ``fusion.http`` (the FastAPI edge) → ``fusion.core``
(gateway, executor, batching, admission) → ``fusion.pipeline`` (the pipeline language) and
``fusion.cache``; ``fusion.serve`` is the only package that imports Ray. The modules at this
level are the shared types every layer may import: config, errors, registry, tasks, values,
chat messages, observe, tracing, bundles, resample (audio). Nothing here imports torch, and
nothing outside ``fusion.serve`` imports ``deployments`` (import-linter contracts in
``pyproject.toml``, run by ``tests/unit/test_import_contracts.py``).
"""

__version__ = "0.1.0"
