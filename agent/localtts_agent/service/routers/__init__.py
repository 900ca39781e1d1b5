"""The service's routes, one module per area: speech (OpenAI-compatible audio over HTTP),
rooms (speech into LiveKit rooms), voices, health (and metrics)."""
