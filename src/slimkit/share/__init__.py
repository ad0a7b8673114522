"""Shrinking shared tables: vocabulary trimming of token-embedding tables."""
