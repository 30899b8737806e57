"""The OpenAI-compatible surface (``/v1/embeddings``, images, audio, chat, completions)."""
