"""The HTTP API (Starlette): thin handlers that parse input, call the service and render the Ximilar envelope."""
