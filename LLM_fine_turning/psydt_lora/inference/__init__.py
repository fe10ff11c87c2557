"""Inference: generation, one conversation turn as every front end prepares it, the terminal chat, the server.

Imports safety, data and the ground floor."""
