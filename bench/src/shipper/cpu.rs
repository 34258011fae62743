//! CPU time of the servers, from /proc/<pid>/stat (utime, stime, cutime, cstime).

use super::results::CpuSeconds;
use super::servers::{Proc, Servers};

/// Clock ticks (user + system) of a process; with `children`, plus those of the children it
/// reaped (cutime + cstime). 0 when it is gone.
fn ticks(pid: u32, children: bool) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11) // state .. cmajflt: utime is field 14 of the line, 12th after ')'
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let own = f.first().unwrap_or(&0) + f.get(1).unwrap_or(&0);
    match children {
        true => own + f.get(2).unwrap_or(&0) + f.get(3).unwrap_or(&0),
        false => own,
    }
}

/// The parent pid of a process (None when it is gone).
fn ppid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The postmaster with its reaped children, plus every live child (the backends).
fn postgres_ticks(postmaster: u32) -> u64 {
    let mut total = ticks(postmaster, true);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in dir.flatten() {
        let pid = entry.file_name().to_str().and_then(|n| n.parse().ok());
        if let Some(pid) = pid.filter(|&p| ppid(p) == Some(postmaster)) {
            total += ticks(pid, false);
        }
    }
    total
}

fn seconds(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz.max(1) as f64
}

/// CPU seconds used so far by redis-server, the shipper (if running), PostgreSQL, this
/// process and the Kafka broker (if any); subtract two readings for an interval.
pub fn now(s: &Servers, shipper: Option<&Proc>) -> CpuSeconds {
    let of = |pid: Option<u32>, children| seconds(pid.map_or(0, |p| ticks(p, children)));
    CpuSeconds {
        redis: of(s.redis.pid(), false),
        shipper: of(shipper.and_then(Proc::pid), true),
        postgres: seconds(s.pg.pid().map_or(0, postgres_ticks)),
        bench: of(Some(std::process::id()), false),
        broker: of(s.tansu.as_ref().and_then(|t| t.pid()), false),
    }
}

impl std::ops::Sub for CpuSeconds {
    type Output = CpuSeconds;
    fn sub(self, o: CpuSeconds) -> CpuSeconds {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        CpuSeconds {
            redis: r(self.redis - o.redis),
            shipper: r(self.shipper - o.shipper),
            postgres: r(self.postgres - o.postgres),
            bench: r(self.bench - o.bench),
            broker: r(self.broker - o.broker),
        }
    }
}
