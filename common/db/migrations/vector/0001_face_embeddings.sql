-- Vector database: one embedding per face and model pack.
CREATE EXTENSION IF NOT EXISTS vector;

-- The column has no fixed dimension so that packs of different sizes (512, 128, ...) share the table;
-- each pack gets a partial HNSW index on embedding::vector(dim), created when the pack is first used
-- (see vector_repository.ensure_pack), which also rejects a vector of the wrong size for that pack.
CREATE TABLE IF NOT EXISTS face_embeddings (
    face_id     bigint      NOT NULL,
    model_pack  text        NOT NULL,
    embedding   vector      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (face_id, model_pack)
);
-- Keep vectors in the heap page, not TOAST: TOASTed vectors make exact scans several times slower.
ALTER TABLE face_embeddings ALTER COLUMN embedding SET STORAGE PLAIN;

CREATE TABLE IF NOT EXISTS model_packs (
    name        text        PRIMARY KEY,
    dim         integer     NOT NULL CHECK (dim > 0),
    index_name  text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
