"""PURE: the desired-state model (names, specs, documents, validation). Imports no I/O library."""
