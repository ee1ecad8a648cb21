"""The deterministic core: clock, domain types, store, GPU inventory, job queue and executors."""
