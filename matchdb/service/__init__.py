"""Use cases: what the API and the CLI do, independent of HTTP and of the terminal."""
