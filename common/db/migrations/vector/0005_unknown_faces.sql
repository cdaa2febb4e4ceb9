-- Embeddings of unknown faces (main database: unknown_faces), one per face and model pack. Apart from
-- face_embeddings so that a search never spends a candidate place on them nor returns one as a match. Clustering
-- compares a face with the unknown faces of its collection and pack only (a few thousand within a retention
-- period): an exact scan over this index's rows.
CREATE TABLE IF NOT EXISTS unknown_face_embeddings (
    unknown_face_id bigint      NOT NULL,
    model_pack      text        NOT NULL,
    collection_id   bigint      NOT NULL,
    embedding       vector      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (unknown_face_id, model_pack)
);
ALTER TABLE unknown_face_embeddings ALTER COLUMN embedding SET STORAGE PLAIN;
CREATE INDEX IF NOT EXISTS unknown_face_embeddings_collection_idx
    ON unknown_face_embeddings (collection_id, model_pack);
