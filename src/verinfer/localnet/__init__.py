"""verinfer.localnet: a whole verified network on one machine (`verinfer up`)."""
