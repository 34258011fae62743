-- failed_events: an operator can dismiss a row (an entry that is not a tally event and never
-- will be), with who, when and why kept in the row.
--
-- A row is in one of three states, told by `resolved` as before and the new `dismissed_at`:
--   unresolved  NOT resolved                          waits for a fix; blocks `restore`
--   resolved    resolved AND dismissed_at IS NULL     a retry stored it as event `event_id`
--   dismissed   resolved AND dismissed_at IS NOT NULL an operator set it aside: never stored
-- `resolved` keeps its meaning "nothing is waiting for this row any more", so what reads
-- NOT resolved (restore's refusal, retry-failed, failed_events_unresolved_idx) leaves
-- dismissed rows alone, a shipper of the previous version included. Rows written before this
-- migration get NULL in the new columns: unresolved or resolved, as they were. Adding
-- nullable columns rewrites nothing; the CHECK reads the table once (it holds few rows).
ALTER TABLE failed_events
    ADD COLUMN dismissed_at   timestamptz,
    ADD COLUMN dismissed_by   text,
    ADD COLUMN dismiss_reason text;

-- The three columns are set together, only on a resolved row that no retry stored, and who
-- and why are never empty.
ALTER TABLE failed_events ADD CONSTRAINT failed_events_dismissal_check CHECK (
    (dismissed_at IS NULL AND dismissed_by IS NULL AND dismiss_reason IS NULL)
    OR (dismissed_at IS NOT NULL AND resolved AND event_id IS NULL
        AND coalesce(btrim(dismissed_by), '') <> ''
        AND coalesce(btrim(dismiss_reason), '') <> '')
);

-- Counted every few seconds by run/persist (tally_failed_events_dismissed), like the
-- unresolved rows through failed_events_unresolved_idx.
CREATE INDEX failed_events_dismissed_idx ON failed_events (id) WHERE dismissed_at IS NOT NULL;
