-- Which type a pack's HNSW index stores. Packs registered from now on get a halfvec index: the same recall as a
-- vector index on face embeddings at half the size and about half the latency (BENCHMARKS.md, search at scale).
-- The table keeps full-precision vectors, so exact comparisons and reported similarities lose nothing.
-- Packs registered before keep their vector index (rebuilding it is an operator's choice: see DEPLOYMENT.md).
ALTER TABLE model_packs ADD COLUMN IF NOT EXISTS index_storage text NOT NULL DEFAULT 'vector'
    CHECK (index_storage IN ('vector', 'halfvec'));
ALTER TABLE model_packs ALTER COLUMN index_storage SET DEFAULT 'halfvec';
