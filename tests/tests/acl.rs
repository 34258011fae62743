//! ACL: key specs (`%R~` / `%W~` users), ACL categories where the server has them (Redis
//! 7.2+, Valkey), and the module's own enforcement where it does not (Redis 7.0). Each
//! behaviour is tested on whichever server runs the suite (`TALLY_SERVER_BIN`).

mod common;

use common::{ok, rejected_seen_by, strings};
use tally_tests::{cmd, Redis};

/// The ACL categories `COMMAND INFO` reports for `name` (empty on Redis 7.0).
fn categories(c: &mut redis::Connection, name: &str) -> Vec<String> {
    let info: Vec<redis::Value> = cmd(&["COMMAND", "INFO", name]).query(c).unwrap();
    let redis::Value::Array(fields) = &info[0] else {
        panic!("{name}: {info:?}")
    };
    redis::from_redis_value(fields[6].clone()).unwrap()
}

/// The flags of the one key spec `COMMAND INFO` reports for `name`.
fn key_spec_flags(c: &mut redis::Connection, name: &str) -> Vec<String> {
    let info: Vec<redis::Value> = cmd(&["COMMAND", "INFO", name]).query(c).unwrap();
    let redis::Value::Array(fields) = &info[0] else {
        panic!("{name}: {info:?}")
    };
    let specs: Vec<Vec<redis::Value>> = redis::from_redis_value(fields[8].clone()).unwrap();
    assert_eq!(specs.len(), 1, "{name}: {specs:?}");
    let spec = &specs[0];
    let at = spec
        .iter()
        .position(|v| redis::from_redis_value::<String>(v.clone()).ok().as_deref() == Some("flags"))
        .unwrap();
    let mut flags: Vec<String> = redis::from_redis_value(spec[at + 1].clone()).unwrap();
    flags.sort();
    flags
}

fn user(
    redis: &Redis,
    admin: &mut redis::Connection,
    name: &str,
    rules: &[&str],
) -> redis::Connection {
    let mut args = vec!["ACL", "SETUSER", name, "reset", "on", ">pw"];
    args.extend_from_slice(rules);
    ok(admin, &args);
    redis::Client::open(format!("redis://{name}:pw@127.0.0.1:{}/", redis.port))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Data every test reads and writes: an asset, a campaign, a usage counter.
fn seed(c: &mut redis::Connection) {
    strings(c, &["ASSET.INCR", "acct", "gold", "10"]);
    ok(c, &["COUPON.CREATE", "camp", "5"]);
    ok(c, &["USAGE.LIMIT", "q", "10"]);
}

#[test]
fn key_specs_are_read_only_for_reads_and_read_write_for_writes() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    let ro = ["RO", "access"];
    let rw_access_update = ["RW", "access", "update"];
    let expect: &[(&str, &[&str])] = &[
        ("asset.get", &ro),
        ("coupon.info", &ro),
        ("usage.get", &ro),
        ("asset.incr", &rw_access_update),
        ("asset.transfer", &rw_access_update),
        ("coupon.claim", &rw_access_update),
        ("coupon.release", &rw_access_update),
        ("usage.consume", &rw_access_update),
        ("coupon.create", &["RW", "insert"]),
        ("usage.limit", &["RW", "update"]),
    ];
    for (name, flags) in expect {
        let mut want: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(key_spec_flags(&mut c, name), want, "{name}");
    }
    seed(&mut c);
    // %R~*: reads only. %W~*: the commands that only insert or update without replying data.
    let mut r = user(&redis, &mut c, "r", &["%R~*", "~tally:*", "+@all"]);
    assert_eq!(strings(&mut r, &["ASSET.GET", "acct", "gold"]), ["10"]);
    let _: Vec<redis::Value> = cmd(&["COUPON.INFO", "camp"]).query(&mut r).unwrap();
    let _: Vec<redis::Value> = cmd(&["USAGE.GET", "q"]).query(&mut r).unwrap();
    let _: String = cmd(&["HGET", "acct", "gold"]).query(&mut r).unwrap();
    for args in [
        &["ASSET.INCR", "acct", "gold", "1"][..],
        &["COUPON.CLAIM", "camp", "u"],
        &["COUPON.CREATE", "camp2", "1"],
        &["USAGE.LIMIT", "q", "5"],
        &["USAGE.CONSUME", "q", "1"],
    ] {
        rejected_seen_by(&mut r, Some(&mut c), args, "NOPERM");
    }
    let mut w = user(&redis, &mut c, "w", &["%W~*", "~tally:*", "+@all"]);
    ok(&mut w, &["COUPON.CREATE", "camp2", "1"]);
    ok(&mut w, &["USAGE.LIMIT", "q", "5"]);
    for args in [
        &["ASSET.GET", "acct"][..],
        &["COUPON.INFO", "camp"],
        &["USAGE.GET", "q"],
        // Like HINCRBY, these reply with the key's values: they need read access too.
        &["ASSET.INCR", "acct", "gold", "1"],
        &["COUPON.CLAIM", "camp", "u"],
    ] {
        rejected_seen_by(&mut w, Some(&mut c), args, "NOPERM");
    }
}

#[test]
fn a_read_only_role_cannot_write_on_any_server() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    seed(&mut c);
    let legacy = categories(&mut c, "asset.incr").is_empty();
    // The usual read-only role.
    let mut ro = user(&redis, &mut c, "ro", &["~*", "+@all", "-@write"]);
    for args in [
        &["ASSET.INCR", "acct", "gold", "1"][..],
        &["ASSET.TRANSFER", "acct", "acct2", "gold", "1"],
        &["COUPON.CLAIM", "camp", "u"],
        &["COUPON.CREATE", "camp2", "1"],
        &["USAGE.CONSUME", "q", "1"],
    ] {
        let e = rejected_seen_by(&mut ro, Some(&mut c), args, "NOPERM");
        if legacy {
            assert!(e.contains("which this command performs"), "{args:?}: {e}");
        }
    }
    assert_eq!(strings(&mut ro, &["ASSET.GET", "acct", "gold"]), ["10"]);
    let info: String = cmd(&["INFO", "tally"]).query(&mut c).unwrap();
    let module_side = if legacy { 5 } else { 0 };
    assert!(
        info.contains(&format!("tally_rejected_noperm:{module_side}")),
        "{info}"
    );
}

#[test]
fn categories_where_the_server_has_them_core_commands_where_it_does_not() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    seed(&mut c);
    let cats = categories(&mut c, "asset.incr");
    let mut rw = user(&redis, &mut c, "rw", &["~*", "+@read", "+@write"]);
    if cats.is_empty() {
        // Redis 7.0: module commands belong to no category; only +@all or the name grants them.
        rejected_seen_by(
            &mut rw,
            Some(&mut c),
            &["ASSET.INCR", "acct", "gold", "1"],
            "NOPERM",
        );
        // The module requires the core commands: without XADD, no ASSET.INCR.
        let mut no_xadd = user(&redis, &mut c, "noxadd", &["~*", "+@all", "-xadd"]);
        let e = rejected_seen_by(
            &mut no_xadd,
            Some(&mut c),
            &["ASSET.INCR", "acct", "gold", "1"],
            "NOPERM",
        );
        assert!(e.contains("XADD"), "{e}");
        let mut no_set = user(&redis, &mut c, "noset", &["~*", "+@all", "-set"]);
        assert_eq!(
            strings(&mut no_set, &["ASSET.INCR", "acct", "gold", "1"]),
            ["11"]
        );
        let e = rejected_seen_by(
            &mut no_set,
            Some(&mut c),
            &["ASSET.INCR", "acct", "gold", "1", "ID", "x"],
            "NOPERM",
        );
        assert!(e.contains("SET"), "{e}");
        // And HGET for a read.
        let mut no_hget = user(&redis, &mut c, "nohget", &["~*", "+@all", "-hget"]);
        let e = rejected_seen_by(&mut no_hget, Some(&mut c), &["ASSET.GET", "acct"], "NOPERM");
        assert!(e.contains("HGET"), "{e}");
        rejected_seen_by(&mut no_hget, Some(&mut c), &["USAGE.GET", "q"], "NOPERM");
        // Granted by name, the module still checks the core commands (all allowed here).
        let mut named = user(
            &redis,
            &mut c,
            "named",
            &["~*", "+@read", "+@write", "+asset.incr"],
        );
        assert_eq!(
            strings(&mut named, &["ASSET.INCR", "acct", "gold", "1"]),
            ["12"]
        );
    } else {
        // Redis 7.2+ / Valkey: @write / @read (+ @tally where the server can add categories).
        assert!(cats.contains(&"@write".to_string()), "{cats:?}");
        assert!(categories(&mut c, "asset.get").contains(&"@read".to_string()));
        assert_eq!(
            strings(&mut rw, &["ASSET.INCR", "acct", "gold", "1"]),
            ["11"]
        );
        if cats.contains(&"@tally".to_string()) {
            let mut t = user(&redis, &mut c, "t", &["~*", "+@tally"]);
            assert_eq!(
                strings(&mut t, &["ASSET.INCR", "acct", "gold", "1"]),
                ["12"]
            );
            rejected_seen_by(&mut t, Some(&mut c), &["HGET", "acct", "gold"], "NOPERM");
        }
    }
}

/// tally's helper keys (stream, sequence hash, op-id records) are derived, not declared:
/// a user with access to the data keys only must not reach them through a tally command.
#[test]
fn helper_keys_need_their_own_key_permissions() {
    let redis = Redis::start(&[]);
    let mut c = redis.conn();
    seed(&mut c);
    let mut data_only = user(
        &redis,
        &mut c,
        "data_only",
        &["~acct", "~camp", "~q", "+@all"],
    );
    for args in [
        &["ASSET.INCR", "acct", "gold", "1"][..],
        &["COUPON.CLAIM", "camp", "u"],
        &["USAGE.CONSUME", "q", "1"],
    ] {
        let e = rejected_seen_by(&mut data_only, Some(&mut c), args, "NOPERM");
        assert!(e.contains("tally:log"), "{args:?}: {e}");
    }
    // Stream and sequence hash allowed, op-id records not.
    let mut no_ops = user(
        &redis,
        &mut c,
        "no_ops",
        &["~acct", "~tally:log", "~tally:seq", "+@all"],
    );
    assert_eq!(
        strings(&mut no_ops, &["ASSET.INCR", "acct", "gold", "1"]),
        ["11"]
    );
    let e = rejected_seen_by(
        &mut no_ops,
        Some(&mut c),
        &["ASSET.INCR", "acct", "gold", "1", "ID", "op-1"],
        "NOPERM",
    );
    assert!(e.contains("tally:op:"), "{e}");
}
