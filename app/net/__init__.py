"""Outgoing HTTP that is not fal's API: the SSRF-safe transport for callers' webhooks and the one JWKS cache."""
