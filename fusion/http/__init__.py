"""The HTTP edge: the FastAPI app, one router module per surface, payload decoding, auth.

``app`` builds the app (``create_api``): the one middleware stack (``middleware``: request
id, CORS, observation, body limit) and the routers: ``native`` (models, pipelines,
health), ``openai/`` (embeddings, images, audio, chat), ``admin`` (cache), ``docs`` and
``playground``. ``context`` and ``auth`` are the per-request dependencies (request id,
deadline from arrival, cache policy, key); ``errors`` renders every error, whatever the
surface. Imports ``fusion.core`` and the shared types; never Ray, torch or ``deployments``.
Errors are turned into HTTP answers here and nowhere below.
"""
