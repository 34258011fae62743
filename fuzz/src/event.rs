//! The `event_decode` target: the shipper's event decoder (`shipper/src/event/decode.rs`) on
//! arbitrary bytes, as a stream entry's `event` field or a Kafka payload reaches it (text
//! that is not UTF-8 never gets to the decoder: the shipper records it as failed first).
//!
//! On what decodes, the contract of docs/events.md holds: a canonical UUID, a known type,
//! `ts >= 0`, at least one key, each once with `seq >= 1`, canonical decimals, the body the
//! type calls for, and no NUL anywhere (Postgres text cannot store one).

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
        (Body::Asset(changes), "asset.incr" | "asset.transfer") => {
            assert!(!changes.is_empty());
            if e.typ == "asset.transfer" {
                assert_eq!((e.keys.len(), changes.len()), (2, 2));
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
        (body, t) => panic!("type {t} decoded to {body:?}"),
    }
}
