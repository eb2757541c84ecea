"""The gateway: the users' OpenAI-compatible entry point, its router, challenger and epoch settler."""
