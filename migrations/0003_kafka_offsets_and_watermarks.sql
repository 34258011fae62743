-- 1. persist keeps its Kafka positions here, written in the same transaction as the events
--    it persisted: on start it seeks to them, so correctness never depends on offsets
--    committed to the broker (those are committed too, only for lag tools).
CREATE TABLE kafka_offsets (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,                 -- the first offset not yet persisted
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- 2. Per-key order proof that does not depend on arrival order. contiguous_seq is the
--    highest n such that seqs 1..n of the key are all in event_keys; last_seq stays the
--    highest seq seen. A key with last_seq > contiguous_seq is waiting for events that
--    arrive later (another partition) or, once the pipeline has drained, has a gap, which
--    `reconcile` reports with the missing range.
ALTER TABLE key_seqs ADD COLUMN contiguous_seq bigint NOT NULL DEFAULT 0;
UPDATE key_seqs ks SET contiguous_seq = p.n
FROM (
    SELECT data_key, max(seq) AS n
    FROM (
        SELECT data_key, seq, row_number() OVER (PARTITION BY data_key ORDER BY seq) AS rn
        FROM (SELECT DISTINCT data_key, seq FROM event_keys) d
    ) x
    WHERE seq = rn
    GROUP BY data_key
) p
WHERE p.data_key = ks.data_key;

-- 3. Anomalies are now only forks: one (key, seq) carried by two different events (for
--    example a Redis failover that lost writes the shipper had already shipped, after which
--    the new primary reissued the seq). Both versions stay in event_keys; this row names them.
--    Rows of the old kinds (gap, out_of_order) were recorded on arrival order and are
--    superseded by the watermark above; they are kept for the record.
ALTER TABLE sequence_anomalies ADD COLUMN other_event_id uuid;
