"""Orthogonal building blocks, each usable alone."""
