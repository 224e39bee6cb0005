"""Every outside system behind a small interface, each with an embedded default."""
