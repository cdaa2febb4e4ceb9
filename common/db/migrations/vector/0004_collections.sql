-- The collection of each face (main database: faces.collection_id), so that a search filters inside the vector
-- database and each index process keeps one set of codes per collection. Existing rows are in "default" (id 1).
ALTER TABLE face_embeddings ADD COLUMN IF NOT EXISTS collection_id bigint NOT NULL DEFAULT 1;
