"""verinfer.protocol: the network's rules as pure functions over explicit state; no I/O, no torch."""
