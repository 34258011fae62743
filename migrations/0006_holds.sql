-- Holds (docs/holds.md): an amount taken out of reach now and decided later, settled
-- (spent), voided (given back) or expired (given back by its deadline). One row per hold,
-- its state as carried by the newest event of it (asset.hold/settle/void/expire,
-- coupon.reserve/confirm/cancel/expire, usage.reserve/commit/cancel/expire).
--
-- Kept like the other derived tables: written in the same transaction as the events, for
-- the newly inserted events only, and only by an event of a higher seq of the key than the
-- one stored (`seq`), so a replay or an out-of-order arrival never moves a hold back.
-- The other derived tables keep their meaning: a held amount is not spent. balances move
-- only with asset.settle's change; a claim row (coupon_issues) is made by coupon.confirm as
-- by coupon.claim, never by a reservation; coupon_campaigns.issued counts open reservations
-- (as the campaign's `issued` in Redis does); usage_totals.used is the usage state's, and
-- `consumed` adds the amount usage.commit added to `used`.
--
-- A new table: nothing existing is rewritten. A shipper before this migration stored no
-- hold event (it sent them to failed_events as an unknown type); `tally-shipper failed
-- retry --all` stores them now (docs/upgrade.md).
CREATE TABLE holds (
    data_key      text        NOT NULL,               -- the key held on: asset hash, campaign, usage key
    hold_id       bigint      NOT NULL,               -- the per-key counter (asset, usage), the issue number (coupon)
    kind          text        NOT NULL,               -- asset | coupon | usage
    subject       text,                               -- the field (asset), the user (coupon); NULL (usage)
    amount        numeric     NOT NULL,               -- held (1 for a coupon)
    status        text        NOT NULL,               -- open | settled | voided | expired
    created_ms    bigint      NOT NULL,               -- the primary's clock, Unix ms
    expires_ms    bigint      NOT NULL,               -- the deadline, Unix ms
    closed_ms     bigint,                             -- ts of the event that closed it; NULL while open
    settled       numeric,                            -- spent by settle/confirm/commit; NULL otherwise
    seq           bigint      NOT NULL,               -- seq of data_key in the event of the last change
    event_id      uuid        NOT NULL,               -- that event
    open_event_id uuid,                               -- the event that opened it (NULL until it arrived)
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (data_key, hold_id),
    CONSTRAINT holds_kind_check CHECK (kind IN ('asset', 'coupon', 'usage')),
    CONSTRAINT holds_status_check CHECK (status IN ('open', 'settled', 'voided', 'expired')),
    CONSTRAINT holds_closed_check CHECK ((status = 'open') = (closed_ms IS NULL)),
    CONSTRAINT holds_settled_check CHECK ((status = 'settled') = (settled IS NOT NULL))
);

-- The open holds, for reconcile (history -> Redis) and restore; small: closed holds leave it.
CREATE INDEX holds_open_idx ON holds (data_key, hold_id) WHERE status = 'open';
