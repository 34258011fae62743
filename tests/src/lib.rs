//! Test harness: starts redis-server with the tally module on a free loopback port, in its
//! own temporary directory, and stops it on drop. Never talks to a server it did not start.

pub mod stories;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The module under test: `$TALLY_MODULE`, else the workspace's release build, else debug.
pub fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("TALLY_MODULE") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("libtally.so");
        if p.exists() {
            return p;
        }
    }
    panic!("libtally.so not found: run `cargo build --release -p tally` or set TALLY_MODULE");
}

/// Ports handed out by this process: never given twice, even after the listener closed.
static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A loopback port that is bindable now, drawn at random from 20000-32767: below Linux's
/// ephemeral range (32768-60999), so no outgoing connection can take it between this check
/// and the server's bind, and never returned twice in one process. A server can still lose
/// a race with another program; `Redis::start`, `Pg::start` and the broker retry on a new
/// port when that happens.
/// How long a test's async connection waits for a reply. redis-rs defaults to 500 ms, which a
/// loaded machine (or a blocking command such as WAIT) can exceed: a reply that takes longer
/// is slow, not lost.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// An async connection with [`RESPONSE_TIMEOUT`] and a 10 s connect timeout.
pub async fn async_conn(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()));
        let port = 20_000 + (h.finish() % 12_768) as u16;
        if issued.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            issued.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000-32767");
}

/// The server binary under test: `$TALLY_SERVER_BIN` (e.g. valkey-server), else redis-server.
pub fn server_bin() -> String {
    std::env::var("TALLY_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_string())
}

/// Waits until the server on `port` answers PING and is `child` itself (INFO's process_id),
/// so a test never talks to a server it did not start. Err when the child exited (for
/// example because another program took the port) or the deadline passed.
pub fn wait_server_owned(port: u16, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let want = format!("process_id:{}", child.id());
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("server exited early ({status})"));
        }
        if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) {
            // INFO answers while the server is still loading its AOF/RDB (`loading:1`), when
            // every data command fails with LOADING: ready means ours and done loading
            let info: redis::RedisResult<String> = redis::cmd("INFO")
                .arg("server")
                .arg("persistence")
                .query(&mut c);
            match info {
                Ok(text) if !text.lines().any(|l| l.trim() == want) => {
                    return Err(format!("port {port} is served by another process"))
                }
                Ok(text) if text.lines().any(|l| l.trim() == "loading:0") => return Ok(()),
                Ok(_) | Err(_) => {} // still loading: keep waiting
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("server on port {port} not ready after {timeout:?}"))
}

/// Lets one process hold the thousands of connections the concurrency stories open.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    module_args: Vec<String>,
    extra: Vec<String>,
    restarting: bool,
}

impl Redis {
    /// A fresh server with the module and `extra` arguments (e.g. `--appendonly yes`).
    pub fn start(extra: &[&str]) -> Redis {
        Redis::start_full(&[], extra)
    }

    /// A server whose `--loadmodule` line carries `module_args` (e.g. `max-backlog 10`).
    pub fn start_with_module_args(module_args: &[&str]) -> Redis {
        Redis::start_full(module_args, &[])
    }

    /// A server that starts from `rdb` (copied into its directory as dump.rdb): data
    /// written by another build of the module, loaded by this one.
    pub fn start_from_rdb(rdb: &Path, extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(rdb, dir.path().join("dump.rdb")).expect("copy the RDB fixture");
        Redis::start_in(dir, &[], extra)
    }

    fn start_full(module_args: &[&str], extra: &[&str]) -> Redis {
        Redis::start_in(tempfile::tempdir().expect("temp dir"), module_args, extra)
    }

    fn start_in(dir: tempfile::TempDir, module_args: &[&str], extra: &[&str]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
            module_args: module_args.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            restarting: false,
        };
        r.spawn();
        r
    }

    /// Start on `self.port`; when the port turns out to be taken (the server exits or
    /// another process answers), retry on a new one (first start only: a restart keeps its port).
    fn spawn(&mut self) {
        for attempt in 0..5 {
            match self.spawn_once() {
                Ok(()) => return,
                Err(e) if attempt < 4 && !self.restarting => {
                    eprintln!(
                        "redis-server on port {}: {e}; retrying on another port",
                        self.port
                    );
                    self.port = free_port();
                }
                Err(e) => panic!("{e}; log:\n{}", self.log()),
            }
        }
    }

    fn spawn_once(&mut self) -> Result<(), String> {
        raise_fd_limit();
        let mut cmd = Command::new(server_bin());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--maxclients")
            .arg("4000")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .arg("--loadmodule")
            .arg(module_path());
        for a in self.module_args.iter().chain(&self.extra) {
            cmd.arg(a);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", server_bin()))?;
        match wait_server_owned(self.port, &mut child, Duration::from_secs(30)) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connect")
    }

    pub async fn aconn(&self) -> redis::aio::MultiplexedConnection {
        async_conn(&self.client()).await.expect("connect")
    }

    /// SHUTDOWN (which writes the AOF) then start again on the same port and directory.
    pub fn restart(&mut self) {
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut self.conn());
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.restarting = true;
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// All stream entries of `stream` as (entry id, parsed event JSON).
pub fn events(conn: &mut redis::Connection, stream: &str) -> Vec<(String, serde_json::Value)> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|e| {
            let raw: String = e.get("event").expect("event field");
            (e.id, serde_json::from_str(&raw).expect("event JSON"))
        })
        .collect()
}

/// Runs one command and returns the error text (panics if it succeeded).
pub fn error_of(conn: &mut redis::Connection, args: &[&str]) -> String {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    match c.query::<redis::Value>(conn) {
        Ok(v) => panic!("{args:?} succeeded with {v:?}, expected an error"),
        Err(e) => {
            let code = e.code().unwrap_or("").to_string();
            let detail = e.detail().unwrap_or("").to_string();
            format!("{code} {detail}").trim().to_string()
        }
    }
}

pub fn cmd(args: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c
}

/// Polls `args` (an INFO-like command) until its text reply contains `needle`, up to 20 s.
pub fn wait_for_text(conn: &mut redis::Connection, args: &[&str], needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text: String = cmd(args).query(conn).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never showed '{needle}': {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything a test can observe: every key with its type and full content, stream entry
/// ids included.
pub fn snapshot(conn: &mut redis::Connection) -> Vec<(String, String)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(conn).expect("KEYS");
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let t: String = redis::cmd("TYPE").arg(&k).query(conn).expect("TYPE");
            let v = match t.as_str() {
                "hash" => {
                    let mut m: Vec<(String, String)> =
                        redis::cmd("HGETALL").arg(&k).query(conn).expect("HGETALL");
                    m.sort();
                    format!("{m:?}")
                }
                "stream" => format!("{:?}", events(conn, &k)),
                "string" => redis::cmd("GET")
                    .arg(&k)
                    .query::<String>(conn)
                    .expect("GET"),
                "zset" => {
                    let m: Vec<(String, String)> = redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(conn)
                        .expect("ZRANGE");
                    format!("{m:?}")
                }
                other => other.to_string(),
            };
            (k, format!("{t}:{v}"))
        })
        .collect()
}
