-- event_keys and event_changes are written in the same transaction as their events row, by
-- the shipper only, so the foreign keys add nothing but a per-row lookup into events. Worse,
-- that lookup's plan is cached per connection: a connection that first ran it while events
-- was empty keeps a sequential scan, and inserts slow down as the table grows
-- (docs/bench-shipper.md, freshness at 1,000 events/s before this migration).
ALTER TABLE event_keys DROP CONSTRAINT IF EXISTS event_keys_event_id_fkey;
ALTER TABLE event_changes DROP CONSTRAINT IF EXISTS event_changes_event_id_fkey;
