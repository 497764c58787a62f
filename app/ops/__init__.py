"""Running it: metrics, logs, the access log line, health, CORS."""
