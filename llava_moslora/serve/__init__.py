"""Talking to a tuned model: the `llava-moslora chat` command."""
