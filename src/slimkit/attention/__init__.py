"""Attention conversions and token reduction for transformer encoders (issue 18)."""
