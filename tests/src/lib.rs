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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("libtally.so");
        if p.exists() {
            return p;
        }
    }
    panic!("libtally.so not found: run `cargo build --release -p tally` or set TALLY_MODULE");
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Lets one process hold the thousands of connections the concurrency stories open.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
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

    fn start_full(module_args: &[&str], extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
            module_args: module_args.iter().map(|s| s.to_string()).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        raise_fd_limit();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port").arg(self.port.to_string())
            .arg("--bind").arg("127.0.0.1")
            .arg("--dir").arg(self.dir.path())
            .arg("--save").arg("")
            .arg("--maxclients").arg("4000")
            .arg("--logfile").arg(self.dir.path().join("redis.log"))
            .arg("--loadmodule").arg(module_path());
        for a in self.module_args.iter().chain(&self.extra) {
            cmd.arg(a);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start redis-server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.client().get_connection() {
                let loading: redis::RedisResult<String> = redis::cmd("PING").query(&mut c);
                if loading.is_ok() {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("redis-server exited early ({status}); log:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not become ready; log:\n{}", self.log());
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
        self.client().get_multiplexed_async_connection().await.expect("connect")
    }

    /// SHUTDOWN (which writes the AOF) then start again on the same port and directory.
    pub fn restart(&mut self) {
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut self.conn());
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
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
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(conn).expect("XRANGE");
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
        assert!(Instant::now() < deadline, "{args:?} never showed '{needle}': {text}");
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
                    let mut m: Vec<(String, String)> = redis::cmd("HGETALL").arg(&k).query(conn).expect("HGETALL");
                    m.sort();
                    format!("{m:?}")
                }
                "stream" => format!("{:?}", events(conn, &k)),
                "string" => redis::cmd("GET").arg(&k).query::<String>(conn).expect("GET"),
                other => other.to_string(),
            };
            (k, format!("{t}:{v}"))
        })
        .collect()
}
