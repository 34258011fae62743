-- Keys compare as bytes: every column that holds a Redis key, a hash field or an id taken
-- from an event (a user, a campaign, a usage period) gets COLLATE "C". Redis compares keys as
-- bytes, and so does the shipper (its per-batch key order is Rust's byte order).
--
-- Why: every batch looks up, locks and inserts its keys in the B-tree indexes on these
-- columns (key_seqs, balances, event_keys, event_changes, usage_totals, coupon_issues, holds).
-- Under the database's default collation, a libc locale such as en_US.UTF-8 or C.UTF-8,
-- every comparison in those indexes is a strcoll() call on copies of both strings; under "C"
-- it is a memcmp(). Measured on PostgreSQL 15 with 1M `acct:<n>h` keys, against C.UTF-8
-- (the cheapest libc locale): primary-key lookups of 300k keys 1.17-1.27 s -> 0.79-0.85 s,
-- 300k inserts of new keys 1.24 s -> 1.01 s, a sort of 300k keys 237 ms -> 150 ms.
--
-- What readers see: equality is unchanged (a deterministic collation finds two strings
-- equal only when their bytes are); ORDER BY and range comparisons (`>`, `<`) on these
-- columns follow byte order (for ASCII: digits, then uppercase, then lowercase). No query of
-- the shipper depends on a linguistic order; the ones that page through keys (`data_key >
-- $1 ORDER BY data_key`) compare and sort by the same collation, so they see every key once.
--
-- Cost: no table is rewritten (the type stays text); each index on these columns is rebuilt,
-- under an ACCESS EXCLUSIVE lock of its table, in this migration's one transaction. On a big
-- history that takes minutes (the growth benchmark rebuilt the per-key indexes of 20M events
-- in about two minutes on 2 cores), so no statement timeout applies here: the shipper's
-- `--pg-statement-timeout-ms` (30 s by default) would abort it half way (nothing applied).
-- The partitioned event_keys and event_changes take the change down to every month's
-- partition; months created later inherit it from the parent.
SET LOCAL statement_timeout = 0;

ALTER TABLE key_seqs ALTER COLUMN data_key TYPE text COLLATE "C";
ALTER TABLE balances
    ALTER COLUMN data_key TYPE text COLLATE "C",
    ALTER COLUMN field TYPE text COLLATE "C";
ALTER TABLE event_keys ALTER COLUMN data_key TYPE text COLLATE "C";
ALTER TABLE event_changes
    ALTER COLUMN data_key TYPE text COLLATE "C",
    ALTER COLUMN field TYPE text COLLATE "C";
ALTER TABLE usage_totals
    ALTER COLUMN usage_key TYPE text COLLATE "C",
    ALTER COLUMN period_id TYPE text COLLATE "C";
ALTER TABLE coupon_campaigns ALTER COLUMN campaign TYPE text COLLATE "C";
ALTER TABLE coupon_issues
    ALTER COLUMN campaign TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
ALTER TABLE holds ALTER COLUMN data_key TYPE text COLLATE "C";
ALTER TABLE sequence_anomalies ALTER COLUMN data_key TYPE text COLLATE "C";
