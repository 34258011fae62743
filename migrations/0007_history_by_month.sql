-- History format 2: event_keys and event_changes partitioned by the UTC month of the event's
-- time (ts_ms). Converts existing rows in place (see docs/history.md).
--
-- Why: every drained event inserts into the per-key indexes of these two tables at a random
-- place. Unpartitioned, those indexes grow with all history ever stored and, once they outgrow
-- shared_buffers, nearly every insert reads and dirties a page: the drain slowed to 0.40x the
-- empty database's rate at 20M events (docs/bench-capacity.md). By month, inserts go to the
-- current month's indexes, whose size is bounded by one month of history; old months are
-- retired by detaching a partition (docs/history.md), not by DELETE.
--
-- What stays the same for readers: the table names, their columns (event_keys gains ts_ms),
-- the per-key order and one index per table for the per-key queries. What changes: (key, seq)
-- is no longer a unique index (a unique index of a partitioned table must contain the
-- partition key); the shipper detects forks under a lock of the key's key_seqs row instead
-- (shipper/src/sinks/postgres/seqs.rs), exactly as before, across months.

-- 1. The month partitions: <table>_<yyyy>m<mm> for ts_ms in [first ms of the month, first ms
--    of the next), both tables, for every month any of `ts_ms` falls in. Returns those months'
--    bounds (created now or before). The shipper calls it before writing a month it has not
--    seen (shipper/src/sinks/postgres/months.rs). SECURITY DEFINER: a shipper running as a role
--    that does not own the tables can still add a month; the advisory lock serializes callers.
CREATE FUNCTION tally_history_months(ts_ms bigint[])
RETURNS TABLE (from_ms bigint, to_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    m timestamp;
    t text;
    locked boolean := false;
BEGIN
    FOR m IN SELECT DISTINCT date_trunc('month', to_timestamp(x / 1000.0) AT TIME ZONE 'UTC')
             FROM unnest(ts_ms) AS x ORDER BY 1 LOOP
        from_ms := (extract(epoch FROM m) * 1000)::bigint;
        to_ms := (extract(epoch FROM m + interval '1 month') * 1000)::bigint;
        FOREACH t IN ARRAY ARRAY['event_keys', 'event_changes'] LOOP
            -- the usual case (the month is there) takes no lock
            IF to_regclass(t || '_' || to_char(m, 'YYYY"m"MM')) IS NULL THEN
                IF NOT locked THEN
                    PERFORM pg_advisory_xact_lock(hashtext('tally_history_months'));
                    locked := true;
                END IF;
                -- the catalog this call sees can predate a caller that created the month while
                -- we waited for the lock: "already exists" means it is there
                BEGIN
                    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)',
                                   t || '_' || to_char(m, 'YYYY"m"MM'), t, from_ms, to_ms);
                EXCEPTION WHEN duplicate_table THEN
                    NULL;
                END;
            END IF;
        END LOOP;
        RETURN NEXT;
    END LOOP;
END
$$;

-- 2. The new tables, the old ones renamed aside.
ALTER TABLE event_keys RENAME TO event_keys_format1;
ALTER INDEX event_keys_pkey RENAME TO event_keys_format1_pkey;
ALTER TABLE event_changes RENAME TO event_changes_format1;
ALTER INDEX event_changes_pkey RENAME TO event_changes_format1_pkey;

-- Per (key, seq) of every event: the first event that carried it (a fork's second event is in
-- `events` and named in sequence_anomalies, not here). ts_ms: the event's time.
CREATE TABLE event_keys (
    event_id uuid   NOT NULL,
    data_key text   NOT NULL,
    seq      bigint NOT NULL,
    ts_ms    bigint NOT NULL
) PARTITION BY RANGE (ts_ms);

-- One row per asset balance change.
CREATE TABLE event_changes (
    event_id uuid    NOT NULL,
    idx      integer NOT NULL,
    data_key text    NOT NULL,
    field    text    NOT NULL,
    delta    numeric NOT NULL,
    balance  numeric NOT NULL,
    seq      bigint  NOT NULL,
    ts_ms    bigint  NOT NULL
) PARTITION BY RANGE (ts_ms);

-- 3. The rows, each into its month (a month per distinct day of `events`, then the copy).
SELECT count(*) FROM tally_history_months(ARRAY(SELECT DISTINCT ts_ms / 86400000 * 86400000 FROM events));
INSERT INTO event_keys (event_id, data_key, seq, ts_ms)
SELECT k.event_id, k.data_key, k.seq, e.ts_ms FROM event_keys_format1 k JOIN events e USING (event_id);
INSERT INTO event_changes (event_id, idx, data_key, field, delta, balance, seq, ts_ms)
SELECT event_id, idx, data_key, field, delta, balance, seq, ts_ms FROM event_changes_format1;
DO $$
BEGIN
    IF (SELECT count(*) FROM event_keys) <> (SELECT count(*) FROM event_keys_format1)
       OR (SELECT count(*) FROM event_changes) <> (SELECT count(*) FROM event_changes_format1) THEN
        RAISE EXCEPTION 'event_keys/event_changes rows without their event in events: not converted';
    END IF;
END
$$;
DROP TABLE event_keys_format1;
DROP TABLE event_changes_format1;

-- 4. The per-key indexes (built once over the copied rows; every month gets its own).
CREATE INDEX event_keys_key_seq_idx ON event_keys (data_key, seq);
CREATE INDEX event_changes_key_field_seq_idx ON event_changes (data_key, field, seq);

-- 5. Months retired by `tally-shipper history retire` (docs/history.md): their rows left
--    events, event_keys and event_changes (archived to files first, unless told not to).
--    `restore --as-of` refuses a moment before the end of a retired month.
CREATE TABLE history_retired (
    month         text        PRIMARY KEY,             -- 2025m06
    from_ms       bigint      NOT NULL,
    to_ms         bigint      NOT NULL,
    events        bigint      NOT NULL,                -- rows removed from each table
    event_keys    bigint      NOT NULL,
    event_changes bigint      NOT NULL,
    archive       text,                                -- where the rows were written; NULL: not archived
    retired_at    timestamptz NOT NULL DEFAULT now()
);

-- 6. An account's statement: the newest `max_rows` changes of (key, field) with seq below
--    `before_seq` (NULL: from the newest), newest first, with their event's type, op-id and
--    META. A function so that its plan is made for the key asked: a driver's prepared
--    statement on the partitioned table falls back, after five runs, to one generic plan for
--    every key, which reads and sorts all of a busy account's changes in every month
--    (135 ms for one account of a 300k-event benchmark history) where the plan for the key
--    merges each month's index in seq order and stops after `max_rows` (0.3 ms).
CREATE FUNCTION tally_statement(key_in text, field_in text, before_seq bigint DEFAULT NULL,
                                max_rows integer DEFAULT 50)
RETURNS TABLE (seq bigint, ts_ms bigint, delta numeric, balance numeric, event_id uuid,
               type text, op text, meta text)
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    RETURN QUERY
    SELECT c.seq, c.ts_ms, c.delta, c.balance, c.event_id, e.type, e.op, e.meta
    FROM event_changes c JOIN events e ON e.event_id = c.event_id
    WHERE c.data_key = key_in AND c.field = field_in
      AND c.seq < COALESCE(before_seq, 9223372036854775807)
    ORDER BY c.seq DESC
    LIMIT max_rows;
END
$$;
