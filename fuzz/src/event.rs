//! The `event_decode` target: the shipper's event decoder (`shipper/src/event/decode.rs`) on
//! arbitrary bytes, as a stream entry's `event` field or a Kafka payload reaches it (text
//! that is not UTF-8 never gets to the decoder: the shipper records it as failed first).
//!
//! On what decodes, the contract of docs/events.md holds: a canonical UUID, a known type,
//! `ts >= 0`, at least one key, each once with `seq >= 1`, canonical decimals, the body the
//! type calls for, and no NUL anywhere (Postgres text cannot store one); hold events
//! (docs/holds.md) have the hold their type calls for.

use crate::domain::decimal::Decimal;
use crate::shipper_decode::{decode, is_canonical_decimal, Body, Event, TYPES};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Ok(e) => check(&e),
        Err(err) => assert!(!err.is_empty()),
    }
}

fn no_nul(s: &str) {
    assert!(!s.contains('\0'), "NUL in a decoded string {s:?}");
}

fn decimal(s: &str) {
    assert!(is_canonical_decimal(s), "{s:?}");
}

fn check(e: &Event) {
    assert_eq!(e.id, e.uuid.hyphenated().to_string());
    assert!(TYPES.contains(&e.typ.as_str()), "{:?}", e.typ);
    assert!(e.ts >= 0);
    assert!(!e.keys.is_empty());
    for (i, k) in e.keys.iter().enumerate() {
        assert!(k.seq >= 1);
        no_nul(&k.key);
        assert!(e.keys[..i].iter().all(|o| o.key != k.key), "key twice");
        assert_eq!(e.seq_of(&k.key), Some(k.seq));
    }
    assert_eq!(e.first_key(), e.keys[0].key);
    for s in e.op.iter().chain(&e.meta) {
        no_nul(s);
    }
    match (&e.body, e.typ.as_str()) {
        (Body::Asset(changes), "asset.incr" | "asset.transfer" | "asset.settle") => {
            assert!(!changes.is_empty());
            if e.typ == "asset.transfer" {
                assert_eq!((e.keys.len(), changes.len()), (2, 2));
            }
            if e.typ == "asset.settle" {
                assert_eq!(changes.len(), 1);
            }
            for c in changes {
                assert!(e.seq_of(&c.key).is_some(), "change on an unlisted key");
                no_nul(&c.field);
                decimal(&c.delta);
                decimal(&c.balance);
            }
        }
        (Body::Coupon(c), t) if t.starts_with("coupon.") => {
            no_nul(&c.campaign);
            c.user.as_deref().map(no_nul);
            if t != "coupon.create" {
                assert!(c.user.is_some() && c.issue.is_some());
            }
            assert!(c.issue.is_none_or(|i| i >= 1));
        }
        (Body::Usage(u), t) if t.starts_with("usage.") => {
            no_nul(&u.key);
            no_nul(&u.period_id);
            decimal(&u.used);
            decimal(&u.limit);
            u.amount.as_deref().map(decimal);
            assert!(t != "usage.consume" || u.amount.is_some());
            assert!(["none", "day", "month"].contains(&u.period.as_str()));
        }
        (Body::Asset(changes), "asset.hold" | "asset.void" | "asset.expire") => {
            assert!(changes.is_empty(), "a hold moves no balance");
        }
        (body, t) => panic!("type {t} decoded to {body:?}"),
    }
    check_hold(e);
}

/// The hold of a hold event: the kind and status of its type, a positive id, a positive
/// amount (1 for a coupon), a deadline after the creation, `settled` (only when settled)
/// within 0..=amount (by the module's `Decimal` order when both are in its range), a
/// subject except for usage; one key; an expiry without op or META, at or after the
/// deadline.
fn check_hold(e: &Event) {
    let (kind, action) = e.typ.split_once('.').expect("a type is kind.action");
    let status = match action {
        "hold" | "reserve" => "open",
        "settle" | "confirm" | "commit" => "settled",
        "void" | "cancel" => "voided",
        "expire" => "expired",
        _ => {
            assert!(e.hold.is_none(), "{} with a hold", e.typ);
            return;
        }
    };
    let h = e.hold.as_ref().expect("a hold event decodes with its hold");
    assert_eq!((h.kind, h.status), (kind, status));
    assert_eq!(e.keys.len(), 1);
    assert!(h.id >= 1 && 0 <= h.created && h.created < h.expires);
    decimal(&h.amount);
    assert!(
        !h.amount.starts_with('-') && h.amount != "0",
        "amount {}",
        h.amount
    );
    assert!(kind != "coupon" || h.amount == "1");
    h.subject.as_deref().map(no_nul);
    assert_eq!(h.subject.is_none(), kind == "usage");
    assert_eq!(h.settled.is_some(), status == "settled");
    if let Some(s) = &h.settled {
        decimal(s);
        assert!(!s.starts_with('-'), "settled {s}");
        // The decoder's decimals have any number of integer digits; within the module's
        // range, its order decides.
        let parsed = (
            Decimal::parse(s.as_bytes()),
            Decimal::parse(h.amount.as_bytes()),
        );
        if let (Ok(settled), Ok(amount)) = parsed {
            assert!(settled <= amount, "settled {s} of {}", h.amount);
        }
    }
    if status == "expired" {
        assert!(e.op.is_none() && e.meta.is_none() && e.ts >= h.expires);
    }
}
