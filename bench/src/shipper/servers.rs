//! Every process the benchmark starts: redis-server with the module, PostgreSQL (run as
//! user postgres), the tansu broker and tally-shipper. Each listens on a free 127.0.0.1
//! port, keeps its data in a temp dir, runs in its own process group (a Ctrl-C at the
//! terminal reaches only tally-bench, which stops them in order) and is stopped when its
//! guard drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::Config;

/// A free port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts connections on `port`.
pub async fn wait_port(port: u16, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Stdout and stderr of a process into `path`.
fn log_to(cmd: &mut Command, path: &Path) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
    cmd.stdout(f.try_clone()?).stderr(f).stdin(Stdio::null());
    Ok(())
}

/// The last lines of a log, for an error message.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process, sent SIGTERM (then SIGKILL after `grace`) when dropped.
pub struct Proc {
    child: Child,
    grace: Duration,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, grace: Duration) -> Result<Proc> {
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.as_std().get_program()))?;
        Ok(Proc { child, grace })
    }

    /// Its process id (None once reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn terminate(&self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// SIGTERM, then waits up to the grace period (SIGKILL after it).
    pub async fn stop(mut self) {
        if self.alive() {
            self.terminate();
            if tokio::time::timeout(self.grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        self.terminate();
        let end = Instant::now() + self.grace;
        while Instant::now() < end && self.alive() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.start_kill();
    }
}

/// Starts a server and waits until it listens on `port`; fails with the end of its log.
async fn spawn_listening(
    cmd: &mut Command,
    port: u16,
    limit: Duration,
    log: &Path,
) -> Result<Proc> {
    let proc = Proc::spawn(cmd, Duration::from_secs(5))?;
    if !wait_port(port, limit).await {
        let program = cmd.as_std().get_program().to_owned();
        bail!("{program:?} did not start:\n{}", tail(log, 20));
    }
    Ok(proc)
}

/// The run's work dir (logs, tansu's data), copied to BENCH_SHIPPER_KEEP when dropped.
pub struct Workdir {
    dir: TempDir,
    keep: Option<PathBuf>,
}

impl Workdir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Some(keep) = &self.keep {
            let copied = std::fs::create_dir_all(keep).and_then(|()| {
                std::process::Command::new("cp")
                    .arg("-r")
                    .arg(self.dir.path().join("."))
                    .arg(keep)
                    .status()
            });
            if let Err(e) = copied {
                eprintln!(
                    "could not keep {} in {}: {e}",
                    self.path().display(),
                    keep.display()
                );
            }
        }
    }
}

pub struct RedisServer {
    _proc: Proc,
    pub port: u16,
}

impl RedisServer {
    async fn start(dir: &Path, module: &Path) -> Result<RedisServer> {
        let port = free_port()?;
        let log = dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "4000"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .arg("--loadmodule")
            .arg(module)
            .stdin(Stdio::null());
        let proc = spawn_listening(&mut cmd, port, Duration::from_secs(20), &log).await?;
        Ok(RedisServer { _proc: proc, port })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self._proc.pid()
    }
}

pub struct Tansu {
    _proc: Proc,
    pub port: u16,
}

impl Tansu {
    pub fn pid(&self) -> Option<u32> {
        self._proc.pid()
    }

    async fn start(bin: &Path, storage: &str, work: &Path) -> Result<Tansu> {
        let port = free_port()?;
        let dir = work.join("kafka");
        std::fs::create_dir_all(&dir)?;
        let storage = match storage {
            "sqlite" => "sqlite://tansu.db", // relative to its working directory
            "memory" => "memory://tansu/",
            url => url,
        };
        let listener = format!("tcp://127.0.0.1:{port}");
        let log = work.join("tansu.log");
        let mut cmd = Command::new(bin);
        cmd.args(["broker", "--storage-engine", storage])
            .args([
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .current_dir(&dir)
            .env("RUST_LOG", "warn");
        log_to(&mut cmd, &log)?;
        let proc = spawn_listening(&mut cmd, port, Duration::from_secs(30), &log).await?;
        Ok(Tansu { _proc: proc, port })
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// PostgreSQL 15 with initdb's defaults (fsync and synchronous_commit on) but for the port,
/// the socket dir, `track_commit_timestamp = on` and BENCH_PG_CONF; stopped (`-m immediate`) when dropped.
pub struct Postgres {
    home: TempDir,
    bin: PathBuf,
    keep: Option<PathBuf>,
    pub port: u16,
}

/// `name=value` checked to be one word of safe characters (it goes on pg_ctl's `-o` line).
fn start_option(setting: &str) -> Result<&str> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_.=".contains(&b);
    match setting.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() && setting.bytes().all(safe) => Ok(setting),
        _ => bail!("BENCH_PG_CONF: {setting:?} is not name=value (letters, digits, _ .)"),
    }
}

/// A command run as user postgres.
fn as_postgres(bin: &Path, tool: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    cmd
}

fn check(cmd: &mut std::process::Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Postgres {
    fn start(cfg: &Config) -> Result<Postgres> {
        // Under /var/tmp and owned by postgres: the postgres user must be able to enter it.
        let home = tempfile::Builder::new()
            .prefix("bench-shipper-pg.")
            .tempdir_in("/var/tmp")?;
        check(
            std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(home.path()),
        )?;
        let port = free_port()?;
        let pg = Postgres {
            home,
            bin: cfg.pg_bin.clone(),
            keep: cfg.keep.clone(),
            port,
        };
        let data = pg.home.path().join("data");
        check(
            as_postgres(&pg.bin, "initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"]),
        )?;
        let mut opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c track_commit_timestamp=on",
            pg.home.path().display()
        );
        for setting in &cfg.pg_conf {
            opts.push_str(&format!(" -c {}", start_option(setting)?));
        }
        check(
            as_postgres(&pg.bin, "pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.home.path().join("pg.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
        )?;
        Ok(pg)
    }

    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// The postmaster's pid, from the first line of postmaster.pid.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.home.path().join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub fn version(&self) -> String {
        command_output(std::process::Command::new(self.bin.join("postgres")).arg("--version"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.home.path().join("data");
        let stop = as_postgres(&self.bin, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
        if let Err(e) = stop {
            eprintln!("pg_ctl stop: {e}");
        }
        if let Some(keep) = &self.keep {
            let _ = std::fs::create_dir_all(keep);
            let _ = std::fs::copy(self.home.path().join("pg.log"), keep.join("pg.log"));
        }
    }
}

/// A command's trimmed stdout ("" when it fails).
pub fn command_output(cmd: &mut std::process::Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The servers of one run. Fields drop in order: tansu, redis, postgres, then the work dir.
pub struct Servers {
    pub tansu: Option<Tansu>,
    pub redis: RedisServer,
    pub pg: Postgres,
    pub metrics_port: u16,
    pub work: Workdir,
}

impl Servers {
    /// Starts redis-server, PostgreSQL (with role and database `tally`) and, when `kafka`,
    /// tansu; then `tally-shipper migrate`.
    pub async fn start(cfg: &Config, kafka: bool) -> Result<Servers> {
        let dir = tempfile::Builder::new()
            .prefix("bench-shipper.")
            .tempdir_in("/tmp")?;
        let work = Workdir {
            dir,
            keep: cfg.keep.clone(),
        };
        let pg = Postgres::start(cfg)?;
        let redis = RedisServer::start(work.path(), &cfg.module).await?;
        let tansu = match kafka {
            true => Some(Tansu::start(&cfg.tansu, &cfg.knobs.tansu_storage, work.path()).await?),
            false => None,
        };
        let s = Servers {
            tansu,
            redis,
            pg,
            metrics_port: free_port()?,
            work,
        };
        eprintln!(
            "[bench-shipper] redis-server on {}, PostgreSQL on {}, tansu on {} (work dir {})",
            s.redis.port,
            s.pg.port,
            s.tansu.as_ref().map_or("-".into(), |t| t.port.to_string()),
            s.work.path().display()
        );
        Ok(s)
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

impl Servers {
    /// Role and database `tally` (as the superuser), then `tally-shipper migrate`.
    pub async fn create_database(&self, cfg: &Config) -> Result<()> {
        use sqlx::Connection as _;
        let mut c = sqlx::PgConnection::connect(&self.pg.url("postgres", "postgres")).await?;
        sqlx::raw_sql("CREATE ROLE tally LOGIN")
            .execute(&mut c)
            .await?;
        sqlx::raw_sql("CREATE DATABASE tally OWNER tally")
            .execute(&mut c)
            .await?;
        c.close().await?;
        let mut cmd = Command::new(&cfg.shipper);
        cmd.args(["migrate", "--database-url", &self.database_url()]);
        log_to(&mut cmd, &self.log("migrate.log"))?;
        if !cmd.status().await?.success() {
            bail!(
                "tally-shipper migrate:\n{}",
                tail(&self.log("migrate.log"), 20)
            );
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.pg.url("tally", "tally")
    }

    /// `tally-shipper run` (logging to shipper-NAME.log): direct, or through Kafka when
    /// `topic` is given (`persist` group `persist-NAME`).
    pub fn shipper_run(&self, cfg: &Config, name: &str, run: RunArgs<'_>) -> Result<Proc> {
        let mut cmd = self.shipper(cfg, "run", "info");
        cmd.args([
            "--redis-url",
            &self.redis.url(),
            "--database-url",
            &self.database_url(),
        ])
        .args([
            "--consumer",
            &format!("bench-{name}"),
            "--progress-interval-ms",
            "5000",
        ]);
        if let Some(b) = run.batch_size {
            cmd.args(["--batch-size", &b.to_string()]);
        }
        if let Some(w) = run.writers {
            cmd.args(["--pg-writers", &w.to_string()]);
        }
        if let Some(topic) = run.topic {
            self.kafka_args(&mut cmd, topic, &format!("persist-{name}"))?;
        }
        spawn_shipper(cmd, &self.log(&format!("shipper-{name}.log")))
    }

    /// `tally-shipper forward` or `persist` alone on `topic` (logging to stage-SUB.log).
    pub fn shipper_stage(&self, cfg: &Config, sub: &str, topic: &str) -> Result<Proc> {
        let mut cmd = self.shipper(cfg, sub, &cfg.stage_log);
        match sub {
            "forward" => cmd.args([
                "--redis-url",
                &self.redis.url(),
                "--consumer",
                "bench-stage",
            ]),
            _ => cmd.args(["--database-url", &self.database_url()]),
        };
        self.kafka_args(&mut cmd, topic, &format!("stage-{topic}"))?;
        cmd.args(["--progress-interval-ms", "100"]);
        spawn_shipper(cmd, &self.log(&format!("stage-{sub}.log")))
    }

    /// `tally-shipper SUB` with the benchmark's metrics address, logging at `level`.
    fn shipper(&self, cfg: &Config, sub: &str, level: &str) -> Command {
        let mut cmd = Command::new(&cfg.shipper);
        cmd.arg(sub)
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{}", self.metrics_port),
            ])
            .env("TALLY_LOG", level);
        cmd
    }

    fn kafka_args(&self, cmd: &mut Command, topic: &str, group: &str) -> Result<()> {
        let tansu = self.tansu.as_ref().context("Kafka run without tansu")?;
        cmd.args(["--kafka-brokers", &tansu.brokers(), "--kafka-topic", topic])
            .args(["--kafka-create-topic", "--kafka-group", group]);
        Ok(())
    }
}

fn spawn_shipper(mut cmd: Command, log: &Path) -> Result<Proc> {
    log_to(&mut cmd, log)?;
    // It flushes what it holds and acknowledges before exiting: give it time.
    Proc::spawn(&mut cmd, Duration::from_secs(40))
}

/// What varies between `tally-shipper run` invocations.
#[derive(Clone, Copy, Default)]
pub struct RunArgs<'a> {
    pub batch_size: Option<u32>,
    pub writers: Option<u32>,
    pub topic: Option<&'a str>,
}
