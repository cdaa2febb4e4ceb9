"""Wire formats: stream names, versioned stream messages, job status and HTTP API models."""
