"""What every service shares: wire schemas, Kafka/Redis/MinIO adapters, settings, logging."""
