//! `failed list` and `failed show`: the rows as a table, one row in full, or JSON.

use sqlx::PgPool;

use super::{EXIT_NO_SUCH_ROW, EXIT_REFUSED};
use crate::commands::EXIT_OK;
use crate::sinks::postgres::failed::{self, Entry};

/// The longest error shown in a table (`show` prints it whole).
const ERROR_WIDTH: usize = 100;

/// `failed list`: the unresolved rows (every row with `all`), then the counts per state.
pub(crate) async fn list(pool: &PgPool, all: bool, json: bool, limit: i64) -> anyhow::Result<u8> {
    let rows = failed::entries(pool, all, limit.max(0)).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(EXIT_OK);
    }
    let counts = failed::counts(pool).await?;
    if !rows.is_empty() {
        print!("{}", table(&rows));
    }
    let shown = if all {
        counts.unresolved + counts.resolved + counts.dismissed
    } else {
        counts.unresolved
    };
    if (rows.len() as i64) < shown {
        println!(
            "(the first {} of {shown} rows; --limit N for more)",
            rows.len()
        );
    }
    println!(
        "failed_events: {} unresolved, {} dismissed, {} resolved",
        counts.unresolved, counts.dismissed, counts.resolved
    );
    if counts.unresolved > 0 {
        println!(
            "next: tally-shipper failed show ID (the payload); once the cause is fixed \
             tally-shipper failed retry ID (or --all); an entry that is not a tally event: \
             tally-shipper failed dismiss ID --reason TEXT"
        );
    }
    Ok(EXIT_OK)
}

/// The rows as an aligned table; a resolved or dismissed row gets a second line saying how.
fn table(rows: &[Entry]) -> String {
    let header = [
        "ID",
        "STATE",
        "ATTEMPTS",
        "FIRST SEEN",
        "LAST SEEN",
        "SOURCE",
        "ERROR",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.state.clone(),
                r.attempts.to_string(),
                r.first_seen.clone(),
                r.last_seen.clone(),
                r.source.clone(),
                one_line(&r.error, ERROR_WIDTH),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for c in &cells {
        for (w, cell) in width.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i + 1 == c.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for (r, c) in rows.iter().zip(&cells) {
        out.push_str(&line(c));
        if let Some(how) = how_handled(r) {
            out.push_str(&format!("{:w$}  {how}\n", "", w = width[0]));
        }
    }
    out
}

/// How a resolved or dismissed row was handled, in one line; None while unresolved.
fn how_handled(r: &Entry) -> Option<String> {
    let at = r.resolved_at.as_deref().unwrap_or("?");
    match r.state.as_str() {
        "dismissed" => Some(format!(
            "dismissed at {} by {}: {}",
            r.dismissed_at.as_deref().unwrap_or(at),
            r.dismissed_by.as_deref().unwrap_or("?"),
            one_line(r.dismiss_reason.as_deref().unwrap_or(""), 200)
        )),
        "resolved" => Some(match &r.event_id {
            Some(ev) => format!("resolved at {at}: stored as event {ev}"),
            None => format!("resolved at {at} (no event stored: marked resolved by hand)"),
        }),
        _ => None,
    }
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    flat.chars().take(max - 3).collect::<String>() + "..."
}

/// `failed show ID`: every column and the payload as received.
pub(crate) async fn show(pool: &PgPool, id: i64, json: bool) -> anyhow::Result<u8> {
    let Some(e) = failed::entry(pool, id).await? else {
        eprintln!("tally-shipper failed show: no failed_events row {id}");
        return Ok(EXIT_NO_SUCH_ROW);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(EXIT_OK);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let fields = [
        ("id", e.id.to_string()),
        ("state", e.state.clone()),
        ("source", e.source.clone()),
        ("via", opt(&e.via)),
        ("stream", opt(&e.stream)),
        ("stream id", opt(&e.stream_id)),
        ("attempts", e.attempts.to_string()),
        ("first seen", e.first_seen.clone()),
        ("last seen", e.last_seen.clone()),
        ("error", e.error.clone()),
        ("resolved at", opt(&e.resolved_at)),
        ("event id", opt(&e.event_id)),
        ("dismissed at", opt(&e.dismissed_at)),
        ("dismissed by", opt(&e.dismissed_by)),
        ("reason", opt(&e.dismiss_reason)),
    ];
    for (k, v) in fields {
        println!("{k:<13} {v}");
    }
    let raw = e.raw.unwrap_or_default();
    println!("payload ({} bytes, as received):", raw.len());
    println!("{raw}");
    Ok(EXIT_OK)
}

/// Why row `id` cannot be `what`: it does not exist (exit 4), or it is not unresolved (5).
pub(crate) async fn not_unresolved(pool: &PgPool, id: i64, what: &str) -> anyhow::Result<u8> {
    let Some(e) = failed::entry(pool, id).await? else {
        eprintln!("tally-shipper failed: no failed_events row {id}");
        return Ok(EXIT_NO_SUCH_ROW);
    };
    let how = how_handled(&e).unwrap_or_else(|| e.state.clone());
    eprintln!("tally-shipper failed: row {id} is not unresolved ({how}): {what}");
    Ok(EXIT_REFUSED)
}
