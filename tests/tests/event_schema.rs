//! The machine-readable event contract (docs/events.schema.json) against the module's real
//! output: every mutating command, with and without an op-id and META, a multi-field
//! ASSET.INCR, 20-digit amounts and a legacy coupon holder list, each stream entry validated.
//! Every event type the schema defines must be emitted (a schema without a producer fails),
//! and every emitted event must match exactly one definition (a producer without a schema
//! fails). docs/kafka-message.schema.json is checked against messages built the way
//! `tally-shipper forward` builds them.
#![allow(clippy::too_many_lines)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{ok, strings};
use serde_json::{json, Value};
use tally_tests::{cmd, events, Redis};

const EVENTS_ID: &str = "urn:tally:schema:events:1";
const STREAM: &str = "tally:log";

fn load(doc: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(doc);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{doc} is not JSON: {e}"))
}

/// A draft 2020-12 validator for `schema`, which must itself be a valid 2020-12 schema.
/// The events schema is registered under its `$id`, for the Kafka schema's references.
fn validator(schema: &Value) -> jsonschema::Validator {
    if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
        panic!("not a valid draft 2020-12 schema: {e}");
    }
    jsonschema::draft202012::options()
        .with_resource(
            EVENTS_ID,
            jsonschema::Resource::from_contents(load("events.schema.json")),
        )
        .build(schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| {
            format!(
                "{e} (at '{}', schema '{}')",
                e.instance_path(),
                e.schema_path()
            )
        })
        .collect()
}

/// The event types the schema defines: the `$defs` its top-level `oneOf` references. Each
/// must pin `type` to its own name, and `properties.type.enum` must list exactly them.
fn schema_types(schema: &Value) -> BTreeSet<String> {
    let refs: Vec<String> = schema["oneOf"]
        .as_array()
        .expect("top-level oneOf")
        .iter()
        .map(|r| {
            r["$ref"]
                .as_str()
                .and_then(|s| s.strip_prefix("#/$defs/"))
                .expect("oneOf entries are #/$defs/ references")
                .to_string()
        })
        .collect();
    for name in &refs {
        assert_eq!(
            schema["$defs"][name]["properties"]["type"]["const"], *name,
            "$defs/{name} must pin `type` to \"{name}\""
        );
    }
    // No event-type definition left out of oneOf.
    let pinned: BTreeSet<String> = schema["$defs"]
        .as_object()
        .expect("$defs")
        .iter()
        .filter(|(_, d)| d["properties"]["type"].get("const").is_some())
        .map(|(k, _)| k.clone())
        .collect();
    let types: BTreeSet<String> = refs.into_iter().collect();
    assert_eq!(pinned, types, "event-type $defs vs the oneOf list");
    let listed: BTreeSet<String> = schema["properties"]["type"]["enum"]
        .as_array()
        .expect("properties.type.enum")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, types, "properties.type.enum vs the oneOf list");
    types
}

/// Runs every mutating command the module has, in its variants; returns the stream length
/// the commands must have produced (one entry per successful, non-replayed command).
fn produce(c: &mut redis::Connection) -> usize {
    let mut n = 0;
    let mut run = |c: &mut redis::Connection, args: &[&str]| {
        ok(c, args);
        n += 1;
    };
    let meta = "daily bonus \"q\" \\ é😀\t\n\u{1}";

    // ASSET.INCR: plain, multi-field with op-id and META, FLOOR / NOFLOOR / CEIL, 20 digits.
    run(c, &["ASSET.INCR", "user.asset.42", "BDP", "5210.43"]);
    run(
        c,
        &[
            "ASSET.INCR",
            "user.asset.42",
            "BDP",
            "-10.43",
            "point",
            "0.1",
            "gems",
            "0.2",
            "ID",
            "grant-42-7",
            "META",
            meta,
            "CEIL",
            "1000000",
        ],
    );
    run(
        c,
        &[
            "ASSET.INCR",
            "debt",
            "gold",
            "-5",
            "NOFLOOR",
            "META",
            "loan",
        ],
    );
    run(
        c,
        &[
            "ASSET.INCR",
            "debt",
            "gold",
            "-0.5",
            "FLOOR",
            "-10",
            "ID",
            "x",
        ],
    );
    run(
        c,
        &[
            "ASSET.INCR",
            "big",
            "x",
            "99999999999999999999.999999999999999999",
        ],
    );
    run(c, &["ASSET.INCR", "big", "x", "-0.000000000000000001"]);
    run(c, &["ASSET.INCR", "zero", "f", "0"]);
    // A replayed op-id appends nothing.
    let before = stream_len(c);
    let replay = strings(
        c,
        &[
            "ASSET.INCR",
            "user.asset.42",
            "BDP",
            "-10.43",
            "point",
            "0.1",
            "gems",
            "0.2",
            "ID",
            "grant-42-7",
            "META",
            meta,
            "CEIL",
            "1000000",
        ],
    );
    assert_eq!(replay, ["5200", "0.1", "0.2"]);
    assert_eq!(stream_len(c), before, "a replay appended an event");

    // ASSET.TRANSFER, plain and with op-id + META.
    run(
        c,
        &[
            "ASSET.TRANSFER",
            "user.asset.42",
            "user.asset.7",
            "BDP",
            "2.5",
        ],
    );
    run(
        c,
        &[
            "ASSET.TRANSFER",
            "user.asset.42",
            "user.asset.7",
            "BDP",
            "0.000000000000000001",
            "ID",
            "t-1",
            "META",
            meta,
        ],
    );

    // COUPON.CREATE / CLAIM / RELEASE, plain and with op-id + META, a window, PERUSER.
    run(c, &["COUPON.CREATE", "camp", "3", "PERUSER", "2"]);
    run(
        c,
        &[
            "COUPON.CREATE",
            "camp-w",
            "5",
            "START",
            "1",
            "END",
            "4102444800000",
            "ID",
            "cc-1",
            "META",
            meta,
        ],
    );
    run(c, &["COUPON.CLAIM", "camp", "alice"]);
    run(
        c,
        &["COUPON.CLAIM", "camp", "alice", "ID", "cl-1", "META", meta],
    );
    run(
        c,
        &[
            "COUPON.RELEASE",
            "camp",
            "alice",
            "ID",
            "rl-1",
            "META",
            meta,
        ],
    );
    run(c, &["COUPON.RELEASE", "camp", "alice"]);
    run(c, &["COUPON.CLAIM", "camp-w", "bob:1"]);
    // A campaign as older module versions wrote it: bob's claims in a legacy `u:bob` list,
    // converted by his next claim and release.
    let _: () = cmd(&[
        "HSET",
        "camp-legacy",
        "kind",
        "coupon",
        "total",
        "10",
        "issued",
        "2",
        "last_issue",
        "7",
        "peruser",
        "3",
        "start",
        "0",
        "end",
        "0",
        "u:bob",
        "3,7",
    ])
    .query(c)
    .expect("HSET legacy campaign");
    run(c, &["COUPON.CLAIM", "camp-legacy", "bob"]);
    run(
        c,
        &["COUPON.RELEASE", "camp-legacy", "bob", "ID", "rl-legacy"],
    );

    // USAGE.LIMIT in every period, USAGE.CONSUME plain and with op-id + META.
    run(c, &["USAGE.LIMIT", "quota", "100"]);
    run(
        c,
        &[
            "USAGE.LIMIT",
            "quota:d",
            "10.5",
            "PERIOD",
            "day",
            "ID",
            "ul-1",
            "META",
            meta,
        ],
    );
    run(c, &["USAGE.LIMIT", "quota:m", "0", "PERIOD", "MONTH"]);
    run(c, &["USAGE.CONSUME", "quota", "0.1"]);
    run(
        c,
        &["USAGE.CONSUME", "quota", "0.2", "ID", "uc-1", "META", meta],
    );
    run(c, &["USAGE.CONSUME", "quota:d", "0.000000000000000001"]);
    // A new limit keeps what was used in the period.
    run(c, &["USAGE.LIMIT", "quota", "0.3", "ID", "ul-2"]);
    n + produce_holds(c, meta)
}

/// The hold commands (docs/holds.md), with and without op-id and META, and one expiry of
/// each kind (waited for: the primary's timer appends them).
fn produce_holds(c: &mut redis::Connection, meta: &str) -> usize {
    let mut n = 0;
    let mut run = |c: &mut redis::Connection, args: &[&str]| {
        ok(c, args);
        n += 1;
    };
    // Each hold command plain, then with op-id and META; then one 1 ms hold per kind.
    let m = meta;
    run(c, &["ASSET.INCR", "holder", "gold", "100"]);
    for args in [
        &["ASSET.HOLD", "holder", "gold", "30", "TTL", "60000"][..],
        &[
            "ASSET.HOLD",
            "holder",
            "gold",
            "5",
            "TTL",
            "60000",
            "ID",
            "h-1",
            "META",
            m,
        ],
        &["ASSET.SETTLE", "holder", "1", "12.5"],
        &["ASSET.SETTLE", "holder", "2", "ID", "s-1", "META", m],
        &["ASSET.HOLD", "holder", "gold", "1", "TTL", "60000"],
        &["ASSET.HOLD", "holder", "gold", "1", "TTL", "60000"],
        &["ASSET.VOID", "holder", "3"],
        &["ASSET.VOID", "holder", "4", "ID", "v-1", "META", m],
        &["ASSET.HOLD", "holder", "gold", "1", "TTL", "1"],
        &["COUPON.CREATE", "hcamp", "10"],
        &["COUPON.RESERVE", "hcamp", "ann", "TTL", "60000"],
        &[
            "COUPON.RESERVE",
            "hcamp",
            "bob",
            "TTL",
            "60000",
            "ID",
            "r-1",
            "META",
            m,
        ],
        &["COUPON.CONFIRM", "hcamp", "ann", "1"],
        &[
            "COUPON.CONFIRM",
            "hcamp",
            "bob",
            "2",
            "ID",
            "c-1",
            "META",
            m,
        ],
        &["COUPON.RESERVE", "hcamp", "cat", "TTL", "60000"],
        &["COUPON.RESERVE", "hcamp", "dan", "TTL", "60000"],
        &["COUPON.CANCEL", "hcamp", "cat", "3"],
        &["COUPON.CANCEL", "hcamp", "dan", "4", "ID", "x-1", "META", m],
        &["COUPON.RESERVE", "hcamp", "eve", "TTL", "1"],
        &["USAGE.LIMIT", "hquota", "10"],
        &["USAGE.RESERVE", "hquota", "4", "TTL", "60000"],
        &[
            "USAGE.RESERVE",
            "hquota",
            "1",
            "TTL",
            "60000",
            "ID",
            "ur-1",
            "META",
            m,
        ],
        &["USAGE.COMMIT", "hquota", "1", "0", "ID", "uc-2", "META", m],
        &["USAGE.COMMIT", "hquota", "2"],
        &["USAGE.RESERVE", "hquota", "1", "TTL", "60000"],
        &["USAGE.RESERVE", "hquota", "1", "TTL", "60000"],
        &["USAGE.CANCEL", "hquota", "3"],
        &["USAGE.CANCEL", "hquota", "4", "ID", "ux-1", "META", m],
        &["USAGE.RESERVE", "hquota", "1", "TTL", "1"],
    ] {
        run(c, args);
    }
    // The three 1 ms holds expire by the timer: one event each.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let expired = |c: &mut redis::Connection| {
        events(c, STREAM)
            .iter()
            .filter(|(_, e)| e["type"].as_str().is_some_and(|t| t.ends_with(".expire")))
            .count()
    };
    while expired(c) < 3 {
        assert!(std::time::Instant::now() < deadline, "holds did not expire");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    n + 3
}

fn stream_len(c: &mut redis::Connection) -> usize {
    cmd(&["XLEN", STREAM]).query(c).expect("XLEN")
}

/// The module's events after `produce`, each checked to be the only field of its entry.
fn emitted() -> Vec<(String, Value)> {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let want = produce(&mut c);
    let raw: redis::streams::StreamRangeReply = cmd(&["XRANGE", STREAM, "-", "+"])
        .query(&mut c)
        .expect("XRANGE");
    assert_eq!(
        raw.ids.len(),
        want,
        "one stream entry per successful command"
    );
    for e in &raw.ids {
        let fields: Vec<&String> = e.map.keys().collect();
        assert_eq!(fields, ["event"], "entry {} has other fields", e.id);
    }
    events(&mut c, STREAM)
}

#[test]
fn every_event_the_module_emits_matches_the_schema() {
    let schema = load("events.schema.json");
    let types = schema_types(&schema);
    let v = validator(&schema);
    let evs = emitted();

    // Each event against its own type's definition (for a readable reason), then against
    // the whole schema (oneOf: exactly one definition matches).
    let own: BTreeMap<&String, jsonschema::Validator> = types
        .iter()
        .map(|t| {
            let def = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$ref": format!("{EVENTS_ID}#/$defs/{t}"),
            });
            (t, validator(&def))
        })
        .collect();
    let mismatches: Vec<String> = evs
        .iter()
        .filter_map(|(id, ev)| {
            let t = ev["type"].as_str().unwrap_or_default().to_string();
            let mut errs = own.get(&t).map(|d| errors(d, ev)).unwrap_or_default();
            errs.extend(errors(&v, ev));
            (!errs.is_empty()).then(|| format!("entry {id}: {ev}\n  {}", errs.join("\n  ")))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "events that do not match docs/events.schema.json:\n{}",
        mismatches.join("\n")
    );

    // Coverage both ways: every defined type emitted, nothing emitted that is not defined.
    let mut by_type: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for (_, ev) in &evs {
        let t = ev["type"].as_str().unwrap_or_default().to_string();
        by_type.entry(t).or_default().push(ev);
    }
    let emitted_types: BTreeSet<String> = by_type.keys().cloned().collect();
    assert_eq!(
        emitted_types, types,
        "event types emitted vs event types in the schema"
    );

    // Every type was seen with and without an op-id (fp + reply only with one) and META;
    // an expiry has neither (the schema pins both to null).
    for (t, list) in by_type.iter().filter(|(t, _)| !t.ends_with(".expire")) {
        let with_op = list.iter().find(|e| e["op"].is_string());
        let plain = list.iter().find(|e| e["op"].is_null());
        let (Some(with_op), Some(plain)) = (with_op, plain) else {
            panic!("{t}: not emitted both with and without an op-id: {list:?}");
        };
        assert!(with_op.get("fp").is_some() && with_op.get("reply").is_some());
        assert!(plain.get("fp").is_none() && plain.get("reply").is_none());
        assert!(
            list.iter().any(|e| e["meta"].is_string()),
            "{t}: never emitted with META"
        );
    }

    // The variants the contract calls out were really exercised.
    let incr = &by_type["asset.incr"];
    assert!(incr
        .iter()
        .any(|e| e["changes"].as_array().map(Vec::len) == Some(3)));
    assert!(incr
        .iter()
        .any(|e| e["changes"][0]["balance"] == "99999999999999999999.999999999999999999"));
    assert!(incr
        .iter()
        .any(|e| e["reply"] == json!({"Array": ["5200", "0.1", "0.2"]})));
    let legacy: Vec<&&Value> = by_type["coupon.claim"]
        .iter()
        .chain(&by_type["coupon.release"])
        .filter(|e| e["coupon"]["campaign"] == "camp-legacy")
        .collect();
    assert_eq!(legacy.len(), 2, "the legacy holder's claim and release");
    assert_eq!(legacy[0]["coupon"]["issue"], 8);
    assert_eq!(
        legacy[1]["reply"],
        json!({"Array": [8, 8]}),
        "release gives back issue 8 and leaves 8 of 10"
    );
    let periods: BTreeSet<&str> = by_type["usage.limit"]
        .iter()
        .filter_map(|e| e["usage"]["period"].as_str())
        .collect();
    assert_eq!(periods, BTreeSet::from(["none", "day", "month"]));
}

/// The schema is not vacuous: real events, each changed in one way the contract forbids,
/// are rejected.
#[test]
fn the_schema_rejects_what_the_contract_forbids() {
    let v = validator(&load("events.schema.json"));
    let evs = emitted();
    let find = |t: &str, with_op: bool| -> Value {
        evs.iter()
            .map(|(_, e)| e)
            .find(|e| e["type"] == t && e["op"].is_string() == with_op)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} event (op-id: {with_op})"))
    };
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, bool, &str, Mutation)> = vec![
        ("asset.incr", false, "an amount as a JSON number", |e| {
            e["changes"][0]["delta"] = json!(5210.43);
        }),
        ("asset.incr", false, "a balance with a trailing zero", |e| {
            e["changes"][0]["balance"] = json!("5210.430");
        }),
        ("asset.incr", false, "an amount with an exponent", |e| {
            e["changes"][0]["delta"] = json!("1e3");
        }),
        ("asset.incr", false, "-0", |e| {
            e["changes"][0]["delta"] = json!("-0");
        }),
        ("asset.incr", false, "21 integer digits", |e| {
            e["changes"][0]["balance"] = json!("100000000000000000000");
        }),
        ("asset.incr", false, "19 fractional digits", |e| {
            e["changes"][0]["balance"] = json!("0.0000000000000000001");
        }),
        ("asset.incr", false, "an unknown type", |e| {
            e["type"] = json!("asset.burn");
        }),
        ("asset.incr", false, "format version 2", |e| {
            e["v"] = json!(2)
        }),
        ("asset.incr", false, "an undocumented key", |e| {
            e["extra"] = json!(1);
        }),
        ("asset.incr", false, "no `op` key", |e| {
            e.as_object_mut().map(|o| o.remove("op"));
        }),
        ("asset.incr", false, "a UUIDv4 id", |e| {
            e["id"] = json!("0193508e-7c4a-4b3e-9f1c-3d2a8e5b6c01");
        }),
        ("asset.incr", false, "an upper-case id", |e| {
            e["id"] = json!("0193508E-7C4A-7B3E-9F1C-3D2A8E5B6C01");
        }),
        ("asset.incr", false, "seq 0", |e| {
            e["keys"][0]["seq"] = json!(0)
        }),
        ("asset.incr", false, "no changes", |e| {
            e["changes"] = json!([]);
        }),
        ("asset.incr", false, "fp without an op-id", |e| {
            e["fp"] = json!("0123456789abcdef0123456789abcdef");
            e["reply"] = json!({"Array": ["1"]});
        }),
        ("asset.incr", true, "an op-id without fp", |e| {
            e.as_object_mut().map(|o| o.remove("fp"));
        }),
        ("asset.incr", true, "a reply with a number", |e| {
            e["reply"] = json!({"Array": [5200]});
        }),
        ("asset.transfer", false, "the `to` change first", |e| {
            let c = e["changes"].clone();
            e["changes"] = json!([c[1], c[0]]);
        }),
        ("asset.transfer", false, "one key", |e| {
            e["keys"] = json!([e["keys"][0]]);
        }),
        ("coupon.create", false, "a user on create", |e| {
            e["coupon"]["user"] = json!("alice");
        }),
        ("coupon.claim", false, "a claim without a user", |e| {
            e["coupon"]["user"] = Value::Null;
        }),
        ("coupon.claim", false, "issue 0", |e| {
            e["coupon"]["issue"] = json!(0);
        }),
        ("coupon.claim", false, "a coupon event with `usage`", |e| {
            e["usage"] = json!({});
        }),
        ("usage.consume", false, "a consume without an amount", |e| {
            e["usage"]["amount"] = Value::Null;
        }),
        ("usage.limit", false, "an amount on limit", |e| {
            e["usage"]["amount"] = json!("1");
        }),
        ("usage.limit", false, "a period id of another period", |e| {
            e["usage"]["period_id"] = json!("2026-01");
        }),
        ("usage.limit", false, "an unknown period", |e| {
            e["usage"]["period"] = json!("week");
        }),
    ];
    for (t, with_op, what, mutate) in cases {
        let good = find(t, with_op);
        assert!(v.is_valid(&good), "{t}: the unchanged event must match");
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!v.is_valid(&bad), "{t} with {what} was accepted: {bad}");
    }
}

/// docs/events.md names the same event types as the schema.
#[test]
fn events_md_and_the_schema_name_the_same_types() {
    let types = schema_types(&load("events.schema.json"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md");
    let md = std::fs::read_to_string(path).expect("read docs/events.md");
    let in_md: BTreeSet<String> = md
        .lines()
        .filter(|l| l.starts_with("### "))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .filter(|w| {
            w.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && w.bytes().all(|c| c.is_ascii_lowercase() || c == b'.')
            })
        })
        .map(str::to_string)
        .collect();
    assert_eq!(in_md, types, "docs/events.md headings vs the schema");
}

/// docs/kafka-message.schema.json against messages built from the module's real events the
/// way `tally-shipper forward` builds them (key = the first data key, headers `tally_source`
/// and `event_id`, value = the event JSON; an entry that is not an event travels under its
/// entry id with `tally_error` and its raw text). The mapping is restated here from the
/// forward code; no broker is involved.
#[test]
fn kafka_messages_as_forward_writes_them_match_their_schema() {
    let v = validator(&load("kafka-message.schema.json"));
    let evs = emitted();
    for (id, ev) in &evs {
        let msg = json!({
            "key": ev["keys"][0]["key"],
            "headers": {"tally_source": format!("redis:{STREAM}/{id}"), "event_id": ev["id"]},
            "value": ev,
        });
        let errs = errors(&v, &msg);
        assert!(errs.is_empty(), "{msg}: {errs:?}");
    }
    let not_an_event = json!({
        "key": "1732272000123-0",
        "headers": {
            "tally_source": "redis:tally:log:{a}/1732272000123-0",
            "tally_error": "stream entry has no `event` field",
        },
        "value": "{\"junk\":\"x\"}",
    });
    assert!(
        errors(&v, &not_an_event).is_empty(),
        "{:?}",
        errors(&v, &not_an_event)
    );

    let (id, ev) = &evs[0];
    let good = json!({
        "key": ev["keys"][0]["key"],
        "headers": {"tally_source": format!("redis:{STREAM}/{id}"), "event_id": ev["id"]},
        "value": ev,
    });
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation)> = vec![
        ("no tally_source", |m| {
            m["headers"]
                .as_object_mut()
                .map(|h| h.remove("tally_source"));
        }),
        ("both event_id and tally_error", |m| {
            m["headers"]["tally_error"] = json!("x");
        }),
        ("an undocumented header", |m| {
            m["headers"]["tally_stream"] = json!("tally:log");
        }),
        ("an event value that breaks the event schema", |m| {
            m["value"]["changes"][0]["delta"] = json!(1);
        }),
        ("an event value as text", |m| {
            m["value"] = json!(m["value"].to_string());
        }),
        ("a source that is not a stream entry", |m| {
            m["headers"]["tally_source"] = json!("kafka:tally/0/5");
        }),
    ];
    for (what, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!v.is_valid(&bad), "accepted a message with {what}: {bad}");
    }
}
