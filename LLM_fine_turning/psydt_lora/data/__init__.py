"""Data: dialogue files, samples (token ids + reply-only labels), the shared_prefix packing and the sample cache.

Imports only the ground floor (psydt_lora.errors, files, prompt, hub, models)."""
