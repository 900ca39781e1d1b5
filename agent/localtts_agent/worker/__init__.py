"""The LiveKit voice-agent worker: `python -m localtts_agent dev|start|connect|console`.

    main.py      the entry: the AgentServer (rooms as threads of one process), prewarm,
                 the job's entrypoint, the checks made before anything loads
    runtime.py   WorkerRuntime: the one engine, voice library and session count of the
                 process, loaded once, shared by every room
    session.py   one room's conversation: the agent, STT and LLM, the greeting
    turns.py     turn taking: the VAD, end of turn, interruptions (VoicedSpeechVAD)
    load.py      the load reported to LiveKit's dispatcher (rooms, GPU)

Environment
-----------
LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET   the LiveKit server (read by livekit-agents)
LIVEKIT_AGENT_NAME                                  explicit dispatch name (optional)
OPENAI_API_KEY, OPENAI_BASE_URL                     STT and LLM (any OpenAI-compatible server)
LOCALTTS_LLM_MODEL, LOCALTTS_LLM_BASE_URL           LLM model and server (base URL overrides
LOCALTTS_STT_MODEL, LOCALTTS_STT_BASE_URL,          OPENAI_BASE_URL for that one service)
LOCALTTS_STT_LANGUAGE
LOCALTTS_AGENT_INSTRUCTIONS, LOCALTTS_AGENT_GREETING
LOCALTTS_AGENT_MAX_SESSIONS, LOCALTTS_AGENT_MIN_INTERRUPTION_S
LOCALTTS_VAD, LOCALTTS_VAD_AGGRESSIVENESS          turn-taking: webrtc (default) or silero
LOCALTTS_AGENT_HTTP_HOST, LOCALTTS_AGENT_HTTP_PORT   the health endpoint (livekit: *:8081)
    (the agent's own: localtts_agent.settings.AgentSettings)
LOCALTTS_ENGINE, LOCALTTS_DEVICE, LOCALTTS_VOICE, ...  the speech engine (the plugin's Settings)
"""
