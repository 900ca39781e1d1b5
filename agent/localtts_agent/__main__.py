"""`python -m localtts_agent dev|start|connect|console`: the LiveKit voice-agent worker."""

from localtts_agent.worker.main import main

if __name__ == "__main__":
    main()
