//! A minimal RESP client for the load generator: explicit pipelining (push, flush, read)
//! so a run controls exactly what goes into each write.

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub enum Val {
    Simple(String),
    Err(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Arr(Option<Vec<Val>>),
}

impl Val {
    pub fn text(&self) -> String {
        match self {
            Val::Simple(s) | Val::Err(s) => s.clone(),
            Val::Int(n) => n.to_string(),
            Val::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Val::Bulk(None) | Val::Arr(None) => String::new(),
            Val::Arr(Some(v)) => v.iter().map(Val::text).collect::<Vec<_>>().join(" "),
        }
    }
    pub fn is_err(&self) -> bool {
        matches!(self, Val::Err(_))
    }
}

pub struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    out: Vec<u8>,
    line: Vec<u8>,
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

impl Conn {
    pub async fn connect(port: u16) -> Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
            out: Vec::with_capacity(64 * 1024),
            line: Vec::new(),
        })
    }

    pub fn push(&mut self, args: &[&[u8]]) {
        encode(&mut self.out, args);
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.w.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    pub fn read(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Val>> + '_>> {
        Box::pin(async move {
            self.line.clear();
            let n = self.r.read_until(b'\n', &mut self.line).await?;
            if n < 3 {
                bail!("connection closed");
            }
            let body = String::from_utf8_lossy(&self.line[1..n - 2]).into_owned();
            match self.line[0] {
                b'+' => Ok(Val::Simple(body)),
                b'-' => Ok(Val::Err(body)),
                b':' => Ok(Val::Int(body.parse()?)),
                b'$' => {
                    let len: i64 = body.parse()?;
                    if len < 0 {
                        return Ok(Val::Bulk(None));
                    }
                    let mut buf = vec![0u8; len as usize + 2];
                    self.r.read_exact(&mut buf).await?;
                    buf.truncate(len as usize);
                    Ok(Val::Bulk(Some(buf)))
                }
                b'*' => {
                    let len: i64 = body.parse()?;
                    if len < 0 {
                        return Ok(Val::Arr(None));
                    }
                    let mut v = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        v.push(self.read().await?);
                    }
                    Ok(Val::Arr(Some(v)))
                }
                c => bail!("unexpected RESP type byte {c}"),
            }
        })
    }

    pub async fn cmd(&mut self, args: &[&str]) -> Result<Val> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.push(&a);
        self.flush().await?;
        self.read().await
    }

    pub async fn ok(&mut self, args: &[&str]) -> Result<Val> {
        let v = self.cmd(args).await?;
        if v.is_err() {
            bail!("{:?} failed: {}", args, v.text());
        }
        Ok(v)
    }

    /// Sends many commands pipelined in batches, failing on the first error reply.
    pub async fn bulk(&mut self, cmds: impl Iterator<Item = Vec<String>>) -> Result<()> {
        let mut pending = 0usize;
        for c in cmds {
            let a: Vec<&[u8]> = c.iter().map(|s| s.as_bytes()).collect();
            self.push(&a);
            pending += 1;
            if pending == 1000 {
                self.drain(pending).await?;
                pending = 0;
            }
        }
        self.drain(pending).await
    }

    pub async fn drain(&mut self, n: usize) -> Result<()> {
        self.flush().await?;
        for _ in 0..n {
            let v = self.read().await?;
            // An EXEC reply is an array: a command that failed inside it is an error too.
            if v.is_err() || matches!(&v, Val::Arr(Some(a)) if a.iter().any(Val::is_err)) {
                bail!("bulk command failed: {}", v.text());
            }
        }
        Ok(())
    }

    pub async fn info(&mut self, section: &str) -> Result<String> {
        Ok(self.ok(&["INFO", section]).await?.text())
    }

    pub async fn info_field(&mut self, section: &str, field: &str) -> Result<i64> {
        let text = self.info(section).await?;
        info_value(&text, field).ok_or_else(|| anyhow!("INFO {section} has no {field}"))
    }
}

/// The value of `field` in the text of an INFO reply (`field:value` lines).
pub fn info_value<T: std::str::FromStr>(info: &str, field: &str) -> Option<T> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}
