"""verinfer.api: the OpenAI-compatible HTTP API's schemas and prompt building, shared by node and gateway."""
