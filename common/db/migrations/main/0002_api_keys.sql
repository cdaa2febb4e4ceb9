-- API keys: only a SHA-256 of each key is stored; the key itself is shown once, when created.
CREATE TABLE IF NOT EXISTS api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL,
    scope         text        NOT NULL CHECK (scope IN ('read', 'write')),
    -- The first characters of the key, to recognise it in listings without storing it.
    prefix        text        NOT NULL,
    key_hash      bytea       NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
