"""The OpenAI-compatible surface: one router per module (``embeddings``, ``images``,
``audio``, ``chat``) and what they share (``compat``); errors in OpenAI's shape."""
