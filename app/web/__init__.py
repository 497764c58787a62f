"""The caller-facing `/v1/*` routes and the playground."""
