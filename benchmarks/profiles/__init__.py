"""Profiles written by hand from published figures, for hardware this machine lacks."""
