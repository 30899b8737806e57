"""The HTTP edge: the FastAPI app, one router module per surface, payload decoding, auth.

Imports ``fusion.core`` and the shared types; never Ray, torch or ``deployments``. Errors are
turned into HTTP answers here and nowhere below.
"""
