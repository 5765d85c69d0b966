"""Flower message adapters used by both ends of the wire (coordinator and sites)."""
