"""Model deployments: one module per model family, over torch code, free of Ray at import.

Each family module holds a ``ModelBackend`` subclass (pure Python + torch, imported inside its
methods; unit-tested without Ray) and ends with its ``FAMILY = Family(...)`` declaration,
listed in the ``fusion.families`` entry points of ``pyproject.toml``, where ``fusion.registry``
finds it. One Serve adapter, ``fusion.serve.served.ServedModel``, serves every family; tiny
test models live in ``deployments/tiny/``.

May import ``fusion``'s shared top-level modules (config, errors, registry, tasks, values,
chat, observe, tracing, resample), never ``fusion.http``/``core``/``pipeline``/``cache``/
``serve``, and never Ray (import-linter contracts in ``pyproject.toml``).
"""
