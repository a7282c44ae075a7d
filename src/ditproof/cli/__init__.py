"""The ``ditproof`` command line: a thin layer over the library."""
