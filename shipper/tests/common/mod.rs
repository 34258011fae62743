//! Test harness: throwaway redis-server, PostgreSQL 15, tansu broker and shipper processes,
//! all on free 127.0.0.1 ports, stopped on drop.
#![allow(dead_code, clippy::too_many_lines)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::PgPool;

pub const BIN: &str = env!("CARGO_BIN_EXE_tally-shipper");
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

static HEAVY: Mutex<()> = Mutex::new(());

/// Tests start several servers each; run them one at a time (2-core machine).
/// A test that cannot run here prints why and returns, unless TALLY_REQUIRE_ALL=1 (set by
/// scripts/test.sh, so CI never counts a skipped test as passed).
pub fn skip(test: &str, why: &str) {
    if std::env::var("TALLY_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{test} cannot run: {why} (TALLY_REQUIRE_ALL=1)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

pub fn serial() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub use tally_tests::free_port;

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tally-test-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

// ---------------------------------------------------------------- redis

pub fn module_path() -> Option<PathBuf> {
    let p = std::env::var("TALLY_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/libtally.so"
            ))
        });
    p.exists().then_some(p)
}

pub struct Redis {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Redis {
    /// A server of our own: retried on a new port if the chosen one turns out to be taken.
    pub fn start(module: Option<&Path>) -> Redis {
        Redis::start_with(module, &[])
    }

    /// The same with extra server arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(module: Option<&Path>, extra: &[&str]) -> Redis {
        let dir = tmpdir("redis");
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(tally_tests::server_bin());
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if let Some(m) = module {
                cmd.arg("--loadmodule").arg(m);
            }
            cmd.args(extra);
            let mut child = cmd.spawn().expect("spawn redis-server");
            match tally_tests::wait_server_owned(port, &mut child, Duration::from_secs(30)) {
                Ok(()) => return Redis { port, child, dir },
                Err(e) => {
                    eprintln!("redis-server on port {port}: {e}; retrying on another port");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// SIGKILL: the server dies without a chance to sync anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub async fn conn(&self) -> MultiplexedConnection {
        aconn(&self.url()).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn xadd(c: &mut MultiplexedConnection, stream: &str, field: &str, value: &str) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(field)
        .arg(value)
        .query_async(c)
        .await
        .unwrap()
}

pub async fn xlen(c: &mut MultiplexedConnection, stream: &str) -> i64 {
    redis::cmd("XLEN").arg(stream).query_async(c).await.unwrap()
}

/// The shipper holds a few connections per node (its reader and one shared connection), not
/// one per stream: at most `max` clients (the test's own included) on a node with `streams`.
pub async fn assert_connections_per_node_not_per_stream(
    c: &mut MultiplexedConnection,
    streams: usize,
    max: usize,
) {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(c)
        .await
        .unwrap();
    let clients: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        streams > max && (2..=max).contains(&clients),
        "{clients} clients for {streams} streams (at most {max})"
    );
}

/// An async connection to `url` that waits up to a minute for a reply (redis-rs defaults to
/// 500 ms, which a loaded machine or WAIT can exceed).
pub async fn aconn(url: &str) -> MultiplexedConnection {
    tally_tests::async_conn(&redis::Client::open(url).unwrap())
        .await
        .unwrap()
}

pub async fn group_pending(c: &mut MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(c)
        .await
        .unwrap();
    match v {
        redis::Value::Array(a) => match &a[0] {
            redis::Value::Int(i) => *i,
            _ => -1,
        },
        _ => -1,
    }
}

// ---------------------------------------------------------------- postgres

pub struct Pg {
    pub port: u16,
    dir: PathBuf,
    running: bool,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .arg("-u")
        .arg("postgres")
        .arg("--")
        .args(args)
        .output()
        .expect("runuser")
}

impl Pg {
    pub fn start() -> Pg {
        let port = free_port();
        let dir = tmpdir("pg");
        let st = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success());
        let data = dir.join("data");
        let out = as_postgres(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Pg {
            port,
            dir,
            running: false,
        };
        for _ in 0..4 {
            match pg.try_start_server() {
                Ok(()) => return pg,
                Err(e) => {
                    eprintln!(
                        "postgres on port {}: {e}; retrying on another port",
                        pg.port
                    );
                    pg.port = free_port();
                }
            }
        }
        pg.start_server();
        pg
    }

    /// Start (again) on the same port and data directory.
    pub fn start_server(&mut self) {
        if let Err(e) = self.try_start_server() {
            panic!("{e}");
        }
    }

    fn try_start_server(&mut self) -> Result<(), String> {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on -c max_connections=50",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let out = as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "30",
            "start",
        ]);
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "pg_ctl start: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.running = true;
        Ok(())
    }

    pub fn stop_server(&mut self) {
        let data = self.dir.join("data");
        let out = as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url())
            .await
            .unwrap()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            let _ = as_postgres(&[
                &format!("{PG_BIN}/pg_ctl"),
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- tansu (Kafka protocol)

pub fn tansu_bin() -> Option<PathBuf> {
    let p = std::env::var("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cargo/bin/tansu")
        });
    p.exists().then_some(p)
}

pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

impl Tansu {
    pub fn start() -> Option<Tansu> {
        let bin = tansu_bin()?;
        let dir = tmpdir("tansu");
        let mut t = Tansu {
            port: free_port(),
            child: None,
            dir,
            bin,
        };
        for _ in 0..4 {
            match t.try_start_server() {
                Ok(()) => return Some(t),
                Err(e) => {
                    eprintln!("tansu on port {}: {e}; retrying on another port", t.port);
                    t.port = free_port();
                }
            }
        }
        t.start_server();
        Some(t)
    }

    /// Start (again) on the same port and storage.
    pub fn start_server(&mut self) {
        if let Err(e) = self.try_start_server() {
            panic!("{e}");
        }
    }

    /// Up when the port accepts connections and the child is still running (a broker that
    /// lost the port race exits).
    fn try_start_server(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("broker")
            .arg("--storage-engine")
            .arg("sqlite://tansu.db") // relative to the working directory
            .current_dir(&self.dir)
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tansu");
        self.child = Some(child);
        let up = wait_port(self.port, Duration::from_secs(30));
        let exited = self
            .child
            .as_mut()
            .map(|c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(true);
        if up && !exited {
            return Ok(());
        }
        self.stop_server();
        let log = std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default();
        Err(format!(
            "tansu did not start (listening: {up}, exited: {exited})\n{}",
            tail_lines(&log, 20)
        ))
    }

    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------- shipper process

pub struct Shipper {
    pub child: Child,
    pub log: PathBuf,
    /// host:port of its /metrics and /healthz
    pub metrics_addr: String,
}

impl Shipper {
    /// `args` must carry `--metrics-addr` (base_args adds one).
    pub fn spawn(args: &[String], log: &Path) -> Shipper {
        let metrics_addr = args
            .iter()
            .position(|a| a == "--metrics-addr")
            .and_then(|i| args.get(i + 1))
            .cloned()
            .expect("shipper args without --metrics-addr");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(BIN)
            .args(args)
            // TALLY_TEST_SHIPPER_LOG (e.g. `debug`) to see more of a failing test's shippers
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_TEST_SHIPPER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("RUST_BACKTRACE", "1")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn tally-shipper");
        Shipper {
            child,
            log: log.to_path_buf(),
            metrics_addr,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Wait until /healthz answers: the signal handlers are installed before it listens.
    pub fn wait_ready(&mut self, t: Duration) {
        let start = Instant::now();
        while start.elapsed() < t {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "shipper exited ({st}) before it was ready:\n{}",
                    tail_lines(&self.log_text(), 40)
                );
            }
            if http_get_blocking(&self.metrics_addr, "/healthz").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "shipper not ready after {t:?}:\n{}",
            tail_lines(&self.log_text(), 40)
        );
    }

    pub fn sigterm(&mut self) {
        self.wait_ready(Duration::from_secs(30));
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for exit; None on timeout.
    pub fn wait_timeout(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < t {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// For failure messages only: tests assert on what a user observes, never on the log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (HTTP status, body) of /healthz; None while it does not answer.
    pub fn healthz(&self) -> Option<(u16, String)> {
        http_get_blocking(&self.metrics_addr, "/healthz")
    }

    /// The value of one series of /metrics (exact name with labels, e.g.
    /// `tally_stream_length{stream="tally:log"}`); None when absent or unreachable.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get_blocking(&self.metrics_addr, "/metrics")?;
        metric_value(&body, series)
    }

    /// Poll until `cond(value of series)` holds; returns the last value seen.
    pub async fn wait_metric(
        &self,
        series: &str,
        timeout: Duration,
        cond: impl Fn(f64) -> bool,
    ) -> Option<f64> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            last = self.metric(series);
            if last.map(&cond).unwrap_or(false) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
}

/// Parse one series out of a Prometheus text exposition.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A plain HTTP/1.1 GET with a 5 s timeout: (status, body), None when nothing answers.
pub fn http_get_blocking(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill9();
        }
    }
}

/// What most tests start from: a plain Redis, a migrated Postgres, a pool on it, a Redis
/// connection and an empty model.
pub struct Stack {
    pub redis: Redis,
    pub pg: Pg,
    pub pool: PgPool,
    pub c: MultiplexedConnection,
    pub m: Model,
}

/// A Postgres with the migrations applied, and a pool on it.
pub async fn migrated_pg() -> (Pg, PgPool) {
    let pg = Pg::start();
    run_migrate(&pg.url());
    let pool = pg.pool().await;
    (pg, pool)
}

/// The built module, or None after `skip` (a test that needs it then returns).
pub fn module_or_skip(test: &str) -> Option<PathBuf> {
    let module = module_path();
    if module.is_none() {
        skip(
            test,
            "libtally.so not found (build module/ in release or set TALLY_MODULE)",
        );
    }
    module
}

pub async fn stack() -> Stack {
    let redis = Redis::start(None);
    let (pg, pool) = migrated_pg().await;
    let c = redis.conn().await;
    Stack {
        redis,
        pg,
        pool,
        c,
        m: Model::default(),
    }
}

/// Redis with the tally module, a migrated Postgres, a pool and a connection; None (after
/// `skip`) when the module is not built.
pub struct ModuleStack {
    pub redis: Redis,
    pub pg: Pg,
    pub pool: PgPool,
    pub c: MultiplexedConnection,
}

pub async fn module_stack(test: &str) -> Option<ModuleStack> {
    let module = module_or_skip(test)?;
    let redis = Redis::start(Some(&module));
    let (pg, pool) = migrated_pg().await;
    let c = redis.conn().await;
    Some(ModuleStack { redis, pg, pool, c })
}

/// A hash's fields.
pub async fn hgetall(c: &mut MultiplexedConnection, key: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL").arg(key).query_async(c).await.unwrap()
}

/// One Redis command that must succeed.
pub async fn cmd(c: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut k = redis::cmd(args[0]);
    for a in &args[1..] {
        k.arg(*a);
    }
    k.query_async::<redis::Value>(c)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// A one-shot `tally-shipper` subcommand: (exit code, stdout + stderr).
pub fn shipper_cmd(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run tally-shipper");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn run_migrate(pg_url: &str) {
    let out = Command::new(BIN)
        .args(["migrate", "--database-url", pg_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies the migrations up to `version` only (a database as an older shipper left it).
pub async fn migrate_up_to(pool: &PgPool, version: i64) {
    let mut m = sqlx::migrate::Migrator::new(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations"
    )))
    .await
    .expect("read migrations/");
    m.migrations = m
        .migrations
        .iter()
        .filter(|m| m.version <= version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    assert_eq!(m.migrations.len() as i64, version);
    m.run(pool).await.expect("migrate");
}

pub fn base_args(
    cmd: &str,
    redis: Option<&str>,
    pg: Option<&str>,
    brokers: Option<&str>,
) -> Vec<String> {
    let mut a = vec![cmd.to_string()];
    if let Some(r) = redis {
        a.extend([
            "--redis-url".into(),
            r.into(),
            "--consumer".into(),
            "c1".into(),
        ]);
        a.extend([
            "--claim-idle-ms".into(),
            "2000".into(),
            "--claim-interval-ms".into(),
            "500".into(),
        ]);
        a.extend([
            "--trim-interval-ms".into(),
            "200".into(),
            "--block-ms".into(),
            "200".into(),
        ]);
    }
    if let Some(p) = pg {
        a.extend(["--database-url".into(), p.into()]);
    }
    if let Some(b) = brokers {
        // 3 partitions: a transfer's second key arrives through another partition
        a.extend([
            "--kafka-brokers".into(),
            b.into(),
            "--kafka-create-topic".into(),
            "--kafka-topic-partitions".into(),
            "3".into(),
        ]);
        a.extend(["--kafka-message-timeout-ms".into(), "10000".into()]);
    }
    a.extend([
        "--metrics-addr".into(),
        format!("127.0.0.1:{}", free_port()),
    ]);
    a.extend([
        "--retry-backoff-cap-ms".into(),
        "1000".into(),
        "--progress-interval-ms".into(),
        "200".into(),
    ]);
    a
}

// ---------------------------------------------------------------- event model

/// Generates contract-conformant events and tracks the expected end state.
#[derive(Default)]
pub struct Model {
    pub seq: HashMap<String, i64>,
    /// (key, field) -> balance in 1/100 units
    pub balances: BTreeMap<(String, String), i64>,
    pub coupon_issued: HashMap<String, i64>,
    /// (campaign, issue) -> user
    pub claims: BTreeMap<(String, i64), String>,
    /// (key, period_id) -> (used cents, consumed cents, count)
    pub usage: BTreeMap<(String, String), (i64, i64, i64)>,
    pub ids: Vec<String>,
    /// (key, seq) references over all events (rows of event_keys)
    pub key_refs: i64,
    /// balance changes over all asset events (rows of event_changes)
    pub changes: i64,
    n: u64,
}

pub fn cents(v: i64) -> String {
    let neg = v < 0;
    let a = v.unsigned_abs();
    let (i, f) = (a / 100, a % 100);
    let mut s = if f == 0 {
        i.to_string()
    } else if f % 10 == 0 {
        format!("{i}.{}", f / 10)
    } else {
        format!("{i}.{f:02}")
    };
    if neg && s != "0" {
        s.insert(0, '-');
    }
    s
}

impl Model {
    fn next_seq(&mut self, key: &str) -> i64 {
        let s = self.seq.entry(key.to_string()).or_insert(0);
        *s += 1;
        *s
    }
    fn id(&mut self) -> String {
        self.n += 1;
        let id = uuid::Uuid::now_v7().hyphenated().to_string();
        self.ids.push(id.clone());
        id
    }

    pub fn asset_incr(&mut self, key: &str, field: &str, delta_cents: i64) -> String {
        let seq = self.next_seq(key);
        let b = self.balances.entry((key.into(), field.into())).or_insert(0);
        *b += delta_cents;
        let bal = *b;
        let id = self.id();
        self.key_refs += 1;
        self.changes += 1;
        serde_json::json!({"v":1,"id":id,"type":"asset.incr","ts":now_ms(),"op":null,"meta":"test",
            "keys":[{"key":key,"seq":seq}],
            "changes":[{"key":key,"field":field,"delta":cents(delta_cents),"balance":cents(bal)}]})
        .to_string()
    }

    /// Moves `cents` of `field` from one key to another: two keys, two changes. Through Kafka
    /// the event travels on the partition of `from`, so `to` sees it out of arrival order.
    pub fn asset_transfer(&mut self, from: &str, to: &str, field: &str, cents_: i64) -> String {
        let (sf, st) = (self.next_seq(from), self.next_seq(to));
        let bf = {
            let b = self
                .balances
                .entry((from.into(), field.into()))
                .or_insert(0);
            *b -= cents_;
            *b
        };
        let bt = {
            let b = self.balances.entry((to.into(), field.into())).or_insert(0);
            *b += cents_;
            *b
        };
        let id = self.id();
        self.key_refs += 2;
        self.changes += 2;
        serde_json::json!({"v":1,"id":id,"type":"asset.transfer","ts":now_ms(),"op":null,"meta":null,
            "keys":[{"key":from,"seq":sf},{"key":to,"seq":st}],
            "changes":[{"key":from,"field":field,"delta":cents(-cents_),"balance":cents(bf)},
                       {"key":to,"field":field,"delta":cents(cents_),"balance":cents(bt)}]})
        .to_string()
    }

    pub fn coupon_claim(&mut self, campaign: &str, user: &str) -> String {
        let seq = self.next_seq(campaign);
        let issued = self.coupon_issued.entry(campaign.into()).or_insert(0);
        *issued += 1;
        let issue = *issued;
        self.claims.insert((campaign.into(), issue), user.into());
        let id = self.id();
        self.key_refs += 1;
        serde_json::json!({"v":1,"id":id,"type":"coupon.claim","ts":now_ms(),"op":null,"meta":null,
            "keys":[{"key":campaign,"seq":seq}],
            "coupon":{"campaign":campaign,"user":user,"issue":issue,"total":1000000,"issued":issue,
                      "remaining":1000000-issue,"peruser":1000000,"start":0,"end":0}})
        .to_string()
    }

    pub fn usage_consume(&mut self, key: &str, amount_cents: i64) -> String {
        let seq = self.next_seq(key);
        let u = self
            .usage
            .entry((key.into(), "all".into()))
            .or_insert((0, 0, 0));
        u.0 += amount_cents;
        u.1 += amount_cents;
        u.2 += 1;
        let used = u.0;
        let id = self.id();
        self.key_refs += 1;
        serde_json::json!({"v":1,"id":id,"type":"usage.consume","ts":now_ms(),"op":null,"meta":null,
            "keys":[{"key":key,"seq":seq}],
            "usage":{"key":key,"amount":cents(amount_cents),"used":cents(used),"limit":"100000000","period":"none","period_id":"all"}})
        .to_string()
    }

    /// A mixed event stream: mostly asset increments over a few keys, some claims and usage.
    pub fn random_event(&mut self, rng: &mut impl rand::Rng) -> String {
        match rng.random_range(0..10) {
            0 => {
                let c = format!("camp{}", rng.random_range(0..3));
                let u = format!("u{}", rng.random_range(0..1000));
                self.coupon_claim(&c, &u)
            }
            1 => {
                let k = format!("quota{}", rng.random_range(0..3));
                self.usage_consume(&k, rng.random_range(1..500))
            }
            2 => {
                let a = rng.random_range(0..20);
                let b = (a + rng.random_range(1..20)) % 20;
                self.asset_transfer(
                    &format!("user:{a}"),
                    &format!("user:{b}"),
                    "gold",
                    rng.random_range(1..300),
                )
            }
            _ => {
                let k = format!("user:{}", rng.random_range(0..20));
                let f = ["gold", "gems"][rng.random_range(0..2)];
                self.asset_incr(&k, f, rng.random_range(-500..1000))
            }
        }
    }
}

/// The module's log stream in standalone mode.
pub const STREAM: &str = "tally:log";

/// Appends `n` model events to the stream and returns every 100th, for replaying later.
pub async fn fill_with_replays(
    c: &mut MultiplexedConnection,
    m: &mut Model,
    rng: &mut impl rand::Rng,
    n: usize,
) -> Vec<String> {
    let mut replay = Vec::new();
    for i in 0..n {
        let e = m.random_event(rng);
        xadd(c, STREAM, "event", &e).await;
        if i % 100 == 0 {
            replay.push(e);
        }
    }
    replay
}

/// Appends `events` in this order, runs the shipper until `events` holds `want` rows, and
/// stops it cleanly.
pub async fn ship_all(
    c: &mut redis::aio::MultiplexedConnection,
    pool: &sqlx::PgPool,
    args: &[String],
    log: &std::path::Path,
    events: &[String],
    want: i64,
) {
    let mut pipe = redis::pipe();
    for e in events {
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("*")
            .arg("event")
            .arg(e)
            .ignore();
    }
    let _: () = pipe.query_async(c).await.unwrap();
    let mut sh = Shipper::spawn(args, log);
    assert_eq!(
        wait_count(
            pool,
            "SELECT count(*) FROM events",
            want,
            Duration::from_secs(60)
        )
        .await,
        want,
        "{}",
        sh.log_text()
    );
    sh.sigterm();
    assert!(sh
        .wait_timeout(Duration::from_secs(30))
        .expect("exit")
        .success());
}

/// The `id` of an event's JSON.
pub fn id_of(e: &str) -> String {
    serde_json::from_str::<serde_json::Value>(e).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `event` with its `ts` set to `ts_ms` (an event of another moment than now).
pub fn at(event: &str, ts_ms: i64) -> String {
    let mut v: serde_json::Value = serde_json::from_str(event).unwrap();
    v["ts"] = ts_ms.into();
    v.to_string()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Poll until `sql` (a count) reaches `want` or the timeout passes; returns the last value.
pub async fn wait_count(pool: &PgPool, sql: &str, want: i64, timeout: Duration) -> i64 {
    let start = Instant::now();
    let mut last = -1;
    while start.elapsed() < timeout {
        if let Ok(v) = sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await {
            last = v;
            if v >= want {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// Full comparison of Postgres against the model: exact event id set, no duplicates,
/// balances, coupon issues, usage totals, per-key last seq, no anomalies, no failures.
pub async fn assert_matches_model(pool: &PgPool, m: &Model, expect_failed: i64) {
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM events")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut got = ids.clone();
    got.sort();
    let mut want = m.ids.clone();
    want.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "event count differs (got {}, want {})",
        got.len(),
        want.len()
    );
    assert!(got == want, "event id sets differ");

    let bal: Vec<(String, String, String)> =
        sqlx::query_as("SELECT data_key, field, balance::text FROM balances ORDER BY 1, 2")
            .fetch_all(pool)
            .await
            .unwrap();
    let want_bal: Vec<(String, String, String)> = m
        .balances
        .iter()
        .map(|((k, f), v)| (k.clone(), f.clone(), cents(*v)))
        .collect();
    let got_bal: Vec<(String, String, String)> = bal
        .into_iter()
        .map(|(k, f, b)| (k, f, normalize_decimal(&b)))
        .collect();
    assert_eq!(got_bal, want_bal, "balances differ");

    let changes = count(pool, "SELECT count(*) FROM event_changes").await;
    assert_eq!(
        changes, m.changes,
        "one event_changes row per balance change"
    );

    let claims: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT campaign, issue, user_id FROM coupon_issues ORDER BY 1, 2")
            .fetch_all(pool)
            .await
            .unwrap();
    let want_claims: Vec<(String, i64, String)> = m
        .claims
        .iter()
        .map(|((c, i), u)| (c.clone(), *i, u.clone()))
        .collect();
    assert_eq!(claims, want_claims, "coupon issues differ");

    let usage: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT usage_key, period_id, used::text, consumed::text, events FROM usage_totals ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let got_usage: Vec<(String, String, String, String, i64)> = usage
        .into_iter()
        .map(|(k, p, u, c, n)| (k, p, normalize_decimal(&u), normalize_decimal(&c), n))
        .collect();
    let want_usage: Vec<(String, String, String, String, i64)> = m
        .usage
        .iter()
        .map(|((k, p), (u, c, n))| (k.clone(), p.clone(), cents(*u), cents(*c), *n))
        .collect();
    assert_eq!(got_usage, want_usage, "usage totals differ");

    let seqs: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT data_key, last_seq, contiguous_seq FROM key_seqs")
            .fetch_all(pool)
            .await
            .unwrap();
    let got_seqs: BTreeMap<String, (i64, i64)> =
        seqs.into_iter().map(|(k, l, c)| (k, (l, c))).collect();
    let want_seqs: BTreeMap<String, (i64, i64)> =
        m.seq.iter().map(|(k, v)| (k.clone(), (*v, *v))).collect();
    assert_eq!(
        got_seqs, want_seqs,
        "per-key (last seq, contiguous seq) differs"
    );

    let event_keys = count(pool, "SELECT count(*) FROM event_keys").await;
    assert_eq!(event_keys, m.key_refs, "event_keys rows");
    let anomalies = count(pool, "SELECT count(*) FROM sequence_anomalies").await;
    assert_eq!(anomalies, 0, "unexpected sequence anomalies");
    let failed = count(pool, "SELECT count(*) FROM failed_events").await;
    assert_eq!(failed, expect_failed, "failed_events rows");
}

/// NUMERIC text -> canonical (strip trailing fractional zeros).
pub fn normalize_decimal(s: &str) -> String {
    if let Some((i, f)) = s.split_once('.') {
        let f = f.trim_end_matches('0');
        let out = if f.is_empty() {
            i.to_string()
        } else {
            format!("{i}.{f}")
        };
        if out == "-0" {
            "0".into()
        } else {
            out
        }
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------- black-hole proxy

/// A TCP proxy between the shipper and a server that the test can switch to a black hole:
/// nothing is forwarded in either direction and nothing is read any more, while every
/// connection stays open (no RST, no FIN), as when the packets are dropped on the way. New
/// connections are accepted but not connected onward meanwhile. Switched back, the bytes
/// held (in the proxy and in the kernel's buffers) flow again, as TCP retransmission would
/// deliver them. Stops on drop.
pub struct BlackHoleProxy {
    pub port: u16,
    holed: tokio::sync::watch::Sender<bool>,
    tasks: std::sync::Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl BlackHoleProxy {
    /// Forwards 127.0.0.1:`self.port` to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> BlackHoleProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let (holed, _) = tokio::sync::watch::channel(false);
        let tasks: std::sync::Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (rx, list) = (holed.subscribe(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let conn = tokio::spawn(proxy_conn(client, upstream, rx.clone(), list.clone()));
                list.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        BlackHoleProxy { port, holed, tasks }
    }

    /// Start (true) or end (false) the black hole.
    pub fn black_hole(&self, on: bool) {
        self.holed.send_replace(on);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

async fn proxy_conn(
    client: tokio::net::TcpStream,
    upstream: u16,
    mut holed: tokio::sync::watch::Receiver<bool>,
    tasks: std::sync::Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
) {
    if holed.wait_for(|h| !*h).await.is_err() {
        return;
    }
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return; // dropping the client closes it, as a refused connection would
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, holed.clone()));
    let down = tokio::spawn(pump(sr, cw, holed));
    let mut list = tasks.lock().unwrap_or_else(|e| e.into_inner());
    list.push(up.abort_handle());
    list.push(down.abort_handle());
}

/// Copies `from` to `to`, holding everything while the black hole is on; passes the end of
/// the stream on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut holed: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if holed.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // bytes read just as the black hole began are held until it ends
        if holed.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The value of the series `name` whose labels include every `labels` pair (in any order).
pub fn metric_with_labels(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let pairs: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()))
            .then(|| value.trim().parse().ok())?
    })
}
