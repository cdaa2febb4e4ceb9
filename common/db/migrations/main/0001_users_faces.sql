-- Main database: people and the faces enrolled for them.
CREATE TABLE IF NOT EXISTS users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text        NOT NULL,
    full_name   text        NOT NULL DEFAULT '',
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Emails compare case-insensitively: Ann@x.org and ann@x.org are one person.
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));

CREATE TABLE IF NOT EXISTS faces (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- One face per enroll job: a redelivered index message finds its row instead of adding one.
    job_id      text        NOT NULL UNIQUE,
    image_key   text        NOT NULL,
    crop_key    text        NOT NULL,
    box         real[]      NOT NULL CHECK (cardinality(box) = 4),
    det_score   real        NOT NULL,
    faces_seen  integer     NOT NULL DEFAULT 1,
    model_pack  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS faces_user_id_idx ON faces (user_id);
