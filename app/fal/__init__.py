"""Everything that talks to fal: the upstream client, fal's storage, fal's webhook signatures."""
