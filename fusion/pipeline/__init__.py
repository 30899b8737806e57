"""The pipeline language: the spec model, its checks, ``$refs``, templates and ``fuse``.

Pure data and checks: imports only the shared types (tasks, values, errors).
"""
