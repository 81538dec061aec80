"""The OpenAI-compatible gateway with retrieval and citations, and the engine launchers behind it."""
