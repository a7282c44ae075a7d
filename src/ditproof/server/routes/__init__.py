"""HTTP routes of the ML-node service, one module per API family."""
