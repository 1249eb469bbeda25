"""The inferwatch sidecar: a protocol-aware reverse proxy that measures every inference."""
