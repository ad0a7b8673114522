"""The package version, in a module of its own so that ``slimkit.core`` can read it without
importing the top-level package (which wires the method catalog and the zoo into core)."""
__version__ = "0.1.0"
