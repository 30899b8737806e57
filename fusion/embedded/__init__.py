"""The embedded runtime: the whole gateway in one process, no Ray.

Same config files, pipelines, cache, families, HTTP API and metrics names as the Serve
runtime; models are ``fusion.replica`` replicas loaded in this process (one ``ModelBundle``),
each with its own asyncio ``BatchQueue``, computing in worker threads. For small boxes and
for the lowest cost per request on one machine; Ray Serve stays the runtime for replicas,
GPUs and anything that outgrows one machine. Start it with ``python -m fusion.embedded
CONFIG.yaml`` or ``./ops/serve-local.sh --embedded``.
"""
