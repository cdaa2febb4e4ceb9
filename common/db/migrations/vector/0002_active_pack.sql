-- One pack is active: searches and new enrollments use it. Others keep their vectors (a re-index in progress,
-- or the pack before the last switch). The first pack registered becomes active.
ALTER TABLE model_packs ADD COLUMN IF NOT EXISTS active boolean NOT NULL DEFAULT false;
UPDATE model_packs SET active = true
 WHERE name = (SELECT name FROM model_packs ORDER BY created_at LIMIT 1)
   AND NOT EXISTS (SELECT 1 FROM model_packs WHERE active);
CREATE UNIQUE INDEX IF NOT EXISTS model_packs_one_active ON model_packs ((true)) WHERE active;
