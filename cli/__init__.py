"""The `tabserve` command line: train, import, serve, run."""
