"""`python -m agent dev|start|connect|console`: the LiveKit voice-agent worker (agent/worker.py)."""

from agent.worker import main

if __name__ == "__main__":
    main()
