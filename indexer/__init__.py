"""Storage: PostgreSQL (users, faces) and pgvector (embeddings), migrations, and the index stage."""
