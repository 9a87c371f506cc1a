"""The prefill pool: its deployment (`server`) and the prefill call it answers (`request`)."""
