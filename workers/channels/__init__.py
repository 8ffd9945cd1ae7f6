"""Channels: one plugin module per channel (``base.py`` is what they implement,
``registry.py`` lists them). Import what you need from those modules."""
