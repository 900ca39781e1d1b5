"""The `localtts` command line (`app.app`, the console script)."""
