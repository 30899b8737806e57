"""Model deployments: one module per model family, over torch code, free of Ray at import.

Each family module holds a ``ModelBackend`` subclass (pure Python + torch, imported inside its
methods; unit-tested without Ray) and ends with its ``FAMILY = Family(...)`` declaration,
which ``fusion.registry`` finds by scanning this package. One Serve adapter,
``fusion.serve.served.ServedModel``, serves every family; tiny test models live in
``deployments/tiny/``.
"""
