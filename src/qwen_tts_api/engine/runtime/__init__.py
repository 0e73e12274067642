"""The runtime: requests, the scheduling policy, the runner that steps batches, the engine facade."""
