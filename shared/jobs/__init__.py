"""Batch jobs: submission, the record and its store, the queue, running whole or in parts,
inputs and outputs, retention."""
