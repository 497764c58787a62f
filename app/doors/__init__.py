"""The two front doors: fal's mirrored queue paths and `@fal-ai/client`'s proxy route, and the one route table they share."""
