"""The localtts app: the LiveKit voice-agent worker, the synthesis service and the
`localtts` command line, built on the plugin (`livekit.plugins.localtts`).

    worker/      `python -m localtts_agent dev|start|console`: joins rooms as a voice agent
    service/     `localtts serve`: speech into rooms, OpenAI-compatible audio, voices, health
    cli/         `localtts say|serve|doctor|voices`
    settings.py  the app's own settings (service, agent); the plugin's are its own

docs/architecture.md shows how the parts fit together.
"""
