"""The published support matrix: tiny models of every architecture and the cell runner."""
