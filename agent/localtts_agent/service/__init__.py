"""The synthesis service: speech into LiveKit rooms, OpenAI-compatible audio over HTTP,
voices, health and metrics (`app.create_app`; `localtts serve` runs it)."""
