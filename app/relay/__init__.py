"""How a job's end reaches everyone: completions, watchers, the poller, the bus, and each sink."""
