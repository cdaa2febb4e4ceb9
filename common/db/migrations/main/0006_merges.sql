-- Corrections: person B merged into person A (POST /v1/users/{A}/merge). B's faces move to A and B is erased (its
-- tombstone in erased_users); this record tells a repeat of the same merge (a client retrying after a lost answer)
-- from a merge of someone who never existed, so the repeat answers with A instead of 404. Identifiers only, like the
-- tombstones: nothing about B but its id.
CREATE TABLE IF NOT EXISTS merged_users (
    user_id     bigint      PRIMARY KEY,
    merged_into bigint      NOT NULL,
    merged_at   timestamptz NOT NULL DEFAULT now()
);
