"""Signals, entities and opportunities from Python (thin calls of the SQL API)."""
