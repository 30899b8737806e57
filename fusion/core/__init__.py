"""The gateway's core: ``Gateway``, the pipeline ``Executor``, list batching, admission.

Free of HTTP, Ray and torch: it talks to models through the ``ModelCaller`` protocol, so it
is unit-tested with fakes. Imports ``fusion.pipeline``, ``fusion.cache`` and the shared types.
"""
