"""The worker process: apply, rollback and repair, log replay, the loop (see loop.pyx)."""
