-- Unknown faces: faces of searches that matched nobody, kept (only in collections with keep_unknown_faces) until
-- the collection's retention ends, clustered incrementally (common/clustering.py) so that a person seen again and
-- again can be named once. Their embeddings are in the vector database's unknown_face_embeddings, never in
-- face_embeddings: they take no place among a search's candidates and are never returned as matches.
CREATE TABLE IF NOT EXISTS unknown_clusters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection_id bigint      NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    model_pack    text        NOT NULL,
    -- A named cluster's faces became this person's enrolled faces; kept so that naming it again answers the same.
    named_user_id bigint,
    -- A dismissed cluster's faces are erased; kept so that dismissing it again answers the same.
    dismissed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (named_user_id IS NULL OR dismissed_at IS NULL)
);
CREATE INDEX IF NOT EXISTS unknown_clusters_collection_idx ON unknown_clusters (collection_id, id);

CREATE TABLE IF NOT EXISTS unknown_faces (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection_id bigint      NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    -- The search job and the face's place in it: a redelivered index entry finds its rows instead of adding more.
    -- A face sent back to the pool by "not this person" keeps its enroll job (face index 0).
    job_id        text        NOT NULL,
    face_index    integer     NOT NULL,
    -- The face's identity across its life (faces.job_id once it is named; rejections and tombstones use it).
    face_job_id   text        NOT NULL UNIQUE,
    crop_key      text        NOT NULL,
    box           real[]      NOT NULL CHECK (cardinality(box) = 4),
    det_score     real        NOT NULL,
    model_pack    text        NOT NULL,
    cluster_id    bigint      REFERENCES unknown_clusters (id) ON DELETE SET NULL,
    -- The enrolled face it was ("not this person"), until its embeddings have moved (then NULL).
    from_face_id  bigint,
    -- The enrolled face it became (naming), until its embeddings have moved (then the row goes).
    to_face_id    bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    UNIQUE (job_id, face_index)
);
CREATE INDEX IF NOT EXISTS unknown_faces_cluster_idx ON unknown_faces (collection_id, cluster_id, id);
CREATE INDEX IF NOT EXISTS unknown_faces_expiry_idx ON unknown_faces (expires_at);
CREATE INDEX IF NOT EXISTS unknown_faces_from_face_idx ON unknown_faces (from_face_id) WHERE from_face_id IS NOT NULL;

-- "Not this person": the face (by its identity, faces.job_id) is never again made a face of this person, by naming
-- a cluster or by a redelivered enroll entry. Erased with the person (cascade) and with the collection.
CREATE TABLE IF NOT EXISTS face_rejections (
    face_job_id   text        NOT NULL,
    user_id       bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    collection_id bigint      NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (face_job_id, user_id)
);
CREATE INDEX IF NOT EXISTS face_rejections_user_idx ON face_rejections (user_id);

-- Dismissed unknown faces stay dismissed: a redelivered search entry keeps nothing for them again. Identifiers only.
CREATE TABLE IF NOT EXISTS erased_unknown_faces (
    face_job_id   text        PRIMARY KEY,
    erased_at     timestamptz NOT NULL DEFAULT now()
);
