"""verinfer.node: the node's HTTP server, scheduler, identity and client (`verinfer node`)."""
