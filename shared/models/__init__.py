"""Model artifacts: the store, manifests, schemas, training, loading, validation, fast paths."""
