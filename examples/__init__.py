"""Forkable examples (each folder is self-contained)."""
