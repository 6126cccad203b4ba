"""Console scripts. Each builds its own ConfigOpts; nothing at import."""
