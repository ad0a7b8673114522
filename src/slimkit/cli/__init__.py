"""The ``slimkit`` command line."""
