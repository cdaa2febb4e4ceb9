"""Wire formats: stream names, versioned stream messages, job status, job results and HTTP API models."""
