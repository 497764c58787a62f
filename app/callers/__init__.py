"""Who is calling and what they may spend: identity, rate limits, slots and budgets, idempotency."""
