"""The orchestration service: the tick that applies decisions, the REST app, the CLI and the LLM agent."""
