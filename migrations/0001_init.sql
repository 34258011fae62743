-- tally-shipper schema (Postgres 15). Applied by `tally-shipper migrate` (sqlx, embedded).
-- Amounts are NUMERIC (exact); event ids are the module's UUIDv7 `id` (dedupe key).

-- One row per event, exactly once (dedupe on event_id).
CREATE TABLE events (
    event_id     uuid        PRIMARY KEY,
    type         text        NOT NULL,
    ts_ms        bigint      NOT NULL,                 -- server time of the change (Unix ms)
    ts           timestamptz NOT NULL,                 -- same, as timestamptz
    op           text,                                 -- client op-id, NULL when none
    meta         text,                                 -- META text, NULL when none
    keys         jsonb       NOT NULL,                 -- [{"key":..,"seq":..}, ...]
    raw          jsonb       NOT NULL,                 -- the full event JSON as received
    stream       text,                                 -- Redis stream key it was read from
    stream_id    text,                                 -- Redis stream entry id (<ms>-<n>)
    source       text        NOT NULL,                 -- redis:<stream>/<id> (origin)
    via          text,                                 -- kafka:<topic>/<partition>/<offset> when shipped through Kafka
    persisted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_ts_idx   ON events (ts_ms);
CREATE INDEX events_type_idx ON events (type, ts_ms);
CREATE INDEX events_op_idx   ON events (op) WHERE op IS NOT NULL;

-- Per-key sequence numbers carried by each event (one row per element of `keys`).
CREATE TABLE event_keys (
    event_id uuid   NOT NULL REFERENCES events (event_id),
    data_key text   NOT NULL,
    seq      bigint NOT NULL,
    PRIMARY KEY (event_id, data_key)
);
CREATE INDEX event_keys_key_seq_idx ON event_keys (data_key, seq);

-- Asset events: one row per changed balance (per-field change rows).
CREATE TABLE event_changes (
    event_id uuid    NOT NULL REFERENCES events (event_id),
    idx      integer NOT NULL,                         -- position in `changes`
    data_key text    NOT NULL,
    field    text    NOT NULL,
    delta    numeric NOT NULL,
    balance  numeric NOT NULL,
    seq      bigint  NOT NULL,                         -- seq of data_key in this event
    ts_ms    bigint  NOT NULL,
    PRIMARY KEY (event_id, idx)
);
CREATE INDEX event_changes_key_field_idx ON event_changes (data_key, field, seq);

-- Latest balance per key+field (the one carried by the highest seq seen).
CREATE TABLE balances (
    data_key   text        NOT NULL,
    field      text        NOT NULL,
    balance    numeric     NOT NULL,
    seq        bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    ts_ms      bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (data_key, field)
);

-- Coupon campaigns: latest state (from the highest seq seen for the campaign key).
CREATE TABLE coupon_campaigns (
    campaign   text        PRIMARY KEY,
    total      bigint      NOT NULL,
    issued     bigint      NOT NULL,
    remaining  bigint      NOT NULL,
    peruser    bigint      NOT NULL,
    start_ms   bigint      NOT NULL,
    end_ms     bigint      NOT NULL,
    seq        bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Coupon issues: one row per (campaign, issue number); released ones are kept and marked.
CREATE TABLE coupon_issues (
    campaign         text   NOT NULL,
    issue            bigint NOT NULL,
    user_id          text,
    claim_event_id   uuid,
    claimed_ts_ms    bigint,
    released         boolean NOT NULL DEFAULT false,
    release_event_id uuid,
    released_ts_ms   bigint,
    PRIMARY KEY (campaign, issue)
);
CREATE INDEX coupon_issues_user_idx ON coupon_issues (campaign, user_id);

-- Usage totals per usage key + period.
CREATE TABLE usage_totals (
    usage_key  text        NOT NULL,
    period_id  text        NOT NULL,                  -- all | YYYY-MM-DD | YYYY-MM
    period     text        NOT NULL,                  -- none | day | month
    used       numeric     NOT NULL,                  -- `used` carried by the highest seq seen
    quota      numeric     NOT NULL,                  -- `limit` carried by the highest seq seen
    consumed   numeric     NOT NULL DEFAULT 0,        -- sum of `amount` of usage.consume events
    events     bigint      NOT NULL DEFAULT 0,        -- number of usage events counted here
    seq        bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (usage_key, period_id)
);

-- Per data key: the highest seq seen.
CREATE TABLE key_seqs (
    data_key   text        PRIMARY KEY,
    last_seq   bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Gaps / out-of-order arrivals of per-key seq.
CREATE TABLE sequence_anomalies (
    id           bigserial   PRIMARY KEY,
    data_key     text        NOT NULL,
    kind         text        NOT NULL,                -- gap | out_of_order
    expected_seq bigint      NOT NULL,                -- last seen + 1
    got_seq      bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    detected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sequence_anomalies_key_idx ON sequence_anomalies (data_key);

-- Entries that could not be decoded or broke the format. Never dropped.
CREATE TABLE failed_events (
    id          bigserial   PRIMARY KEY,
    source      text        NOT NULL UNIQUE,          -- redis:<stream>/<id> or kafka:<topic>/<partition>/<offset>
    via         text,                                 -- kafka coordinates when it came through Kafka
    stream      text,
    stream_id   text,
    raw         text        NOT NULL,                 -- payload as received (the `event` field, or all fields as JSON)
    error       text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    resolved    boolean     NOT NULL DEFAULT false,
    resolved_at timestamptz,
    event_id    uuid                                  -- set when a retry decoded it
);
CREATE INDEX failed_events_unresolved_idx ON failed_events (id) WHERE NOT resolved;
