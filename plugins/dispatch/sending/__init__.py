"""Exactly-once sending: claims, liveness, messages, outcomes, events, invoice PDFs."""
