"""A model replica's request handling, the same in both runtimes.

``Replica`` checks a request's inputs before batching, runs model code in a worker thread
(one forward pass at a time), streams progress and tokens, and measures queueing apart from
computing; ``ModelBundle`` loads several replicas in one process. What differs between the
runtimes is only how single calls are gathered into batches: Serve's ``@serve.batch`` in
``fusion.serve`` and an asyncio ``BatchQueue`` in ``fusion.embedded``. Free of Ray; it hosts
``deployments`` backends (through the registry), so only runtime packages import it.
"""
