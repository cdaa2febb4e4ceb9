-- Erased stays erased. A stream entry of an erased face or person can be delivered again (a worker killed between
-- its commit and its XACK, `fecapass dlq replay`); the index stage looks here, in the transaction that would insert,
-- and stores nothing. Tombstones hold identifiers only: no photo key, box, score or embedding.
CREATE TABLE IF NOT EXISTS erased_users (
    user_id     bigint      PRIMARY KEY,
    erased_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS erased_faces (
    -- The enroll job that made the face: what a redelivered index entry carries.
    job_id      text        PRIMARY KEY,
    -- Which embeddings to delete when a worker wrote one after the erasure had deleted them (see indexer/stage.py).
    face_id     bigint      NOT NULL,
    erased_at   timestamptz NOT NULL DEFAULT now()
);

-- A face is served (listed, returned by searches) once its embedding is committed in the vector database, which may
-- be another server: the index stage inserts the row unserved, writes the embedding, then serves the row. A crash in
-- between leaves an unserved row that the redelivered entry finishes or, if the face was erased meanwhile, cleans up.
-- Erasure unserves the row first, so a half-finished erasure shows nothing either. Faces enrolled before this
-- migration have their embedding: they are served.
ALTER TABLE faces ADD COLUMN IF NOT EXISTS served boolean NOT NULL DEFAULT true;
ALTER TABLE faces ALTER COLUMN served SET DEFAULT false;
