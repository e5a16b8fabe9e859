"""Outputs of idstream (Kafka topics, webhooks, the warehouse). Filled by later issues."""
