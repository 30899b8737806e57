"""Model deployments: one module per model family, thin Ray Serve adapters over torch code.

Each family module holds a ``*Model`` class (pure Python + torch, unit-tested without Ray)
and a ``*Deployment`` Serve class: ``@serve.deployment class XDeployment(ServedModel)`` with
``backend_cls = XModel`` and nothing else (``deployments.base``).
"""
