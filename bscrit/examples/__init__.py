"""Built-in examples shipped with the package (used by ``bscrit demo`` and the docs)."""
