//! The metric names the operator artefacts use are real: every metric in the expressions of
//! deploy/prometheus/tally-alerts.yml and in the queries of deploy/grafana/tally-dashboard.json
//! must be in the /metrics of a running shipper (redis-server + module, PostgreSQL, `run`),
//! scraped after events went through it.
//!
//! Names are taken from the PromQL by a small lexer (strings, ranges, label matchers, grouping
//! lists, functions, keywords and Grafana variables are not metric names), and cross-checked
//! with a plain search for `tally_...` words, so a name the lexer skipped still fails.
//! A histogram `h` exists through its `h_bucket`, `h_sum` and `h_count` series; `h` alone has
//! no series in Prometheus and is refused. Names under rate()/increase() must be counters (or a
//! histogram's series), under predict_linear()/deriv()/delta() gauges. Label names used in
//! matchers and grouping must be labels of those series, or the target labels `job`/`instance`.
//!
//! Series that only exist once a label value occurs, and how this test brings them about:
//! - `tally_stream_{length,lag_seconds,unread_entries,pending_entries}{stream}`: the stream
//!   sampler sets them once the log stream exists (the module's commands create it);
//! - `tally_batch_seconds_*`, `tally_batch_size_*`, `tally_end_to_end_lag_seconds` `{stage}`:
//!   after the first batch delivered to Postgres (stage `persist` on the direct path);
//! - `tally_pg_copy_batches_total{table,result}`: after the first batch COPY into `events`;
//! - `tally_delivery_failures_total{stage}`: exported for `forward` and `persist` from the
//!   start;
//! - `tally_failed_events_{unresolved,dismissed}`: once `run` (or `persist`) has counted the
//!   failed_events rows, right after its start (`forward` never exports them).
//!
//! The only name checked without a scrape is `up`: Prometheus writes it for every target it
//! scrapes; it is never part of an exposition. Recording rules (`tally:...`) defined in the
//! rules file may be used by its alerts, not by the dashboard (which must work without them).
#![allow(clippy::too_many_lines)]
// `serial()` is held for the whole test on purpose: it keeps heavy tests from running at once.
#![allow(clippy::await_holding_lock)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Written by Prometheus itself for every scrape target.
const SYNTHETIC: &[&str] = &["up"];
/// Target labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(path)
}

// ------------------------------------------------------------------ PromQL

/// A metric name in an expression, with what surrounds it.
#[derive(Debug, Clone)]
struct Use {
    name: String,
    /// label names in its `{...}` matchers
    matchers: Vec<String>,
    /// the innermost enclosing function or aggregation
    func: Option<String>,
}

#[derive(Debug, Default)]
struct Parsed {
    uses: Vec<Use>,
    /// labels of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists
    grouping: BTreeSet<String>,
}

const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_ident(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn peek_non_space(&self) -> Option<u8> {
        self.s[self.i..]
            .iter()
            .copied()
            .find(|b| !b.is_ascii_whitespace())
    }

    fn skip_space(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while self.i < self.s.len() && is_ident(self.s[self.i]) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// Skips a quoted string starting at `self.i`.
    fn string(&mut self) -> Result<(), String> {
        let quote = self.s[self.i];
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' if quote != b'`' => self.i += 2,
                b if b == quote => {
                    self.i += 1;
                    return Ok(());
                }
                _ => self.i += 1,
            }
        }
        Err("unterminated string".into())
    }

    /// Skips to just past the `close` matching the opener at `self.i`.
    fn skip_balanced(&mut self, close: u8) -> Result<(), String> {
        let open = self.s[self.i];
        let mut depth = 0;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'"' | b'\'' | b'`' => {
                    self.string()?;
                    continue;
                }
                b if b == open => depth += 1,
                b if b == close => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(format!("unbalanced '{}'", open as char))
    }

    /// `{label op "value", ...}` starting at `self.i`: the label names.
    fn matchers(&mut self) -> Result<Vec<String>, String> {
        self.i += 1;
        let mut labels = Vec::new();
        loop {
            self.skip_space();
            match self.s.get(self.i) {
                None => return Err("unterminated label matchers".into()),
                Some(b'}') => {
                    self.i += 1;
                    return Ok(labels);
                }
                Some(b',') => self.i += 1,
                Some(&b) if is_ident_start(b) => {
                    labels.push(self.ident());
                    self.skip_space();
                    while self.i < self.s.len() && b"=!~".contains(&self.s[self.i]) {
                        self.i += 1;
                    }
                    self.skip_space();
                    match self.s.get(self.i) {
                        Some(b'"' | b'\'' | b'`') => self.string()?,
                        _ => return Err("a label matcher without a quoted value".into()),
                    }
                }
                Some(&b) => return Err(format!("unexpected '{}' in matchers", b as char)),
            }
        }
    }

    /// `(label, ...)` starting at the next non-space character.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.skip_space();
        if self.s.get(self.i) != Some(&b'(') {
            return Err("a grouping keyword without its label list".into());
        }
        let start = self.i + 1;
        self.skip_balanced(b')')?;
        let inner = String::from_utf8_lossy(&self.s[start..self.i - 1]).into_owned();
        Ok(inner
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// The metric names, matcher labels and grouping labels of one PromQL expression. Grafana
/// variables (`$x`, `${x}`) are treated as literals.
fn parse_promql(expr: &str) -> Result<Parsed, String> {
    let mut lx = Lexer {
        s: expr.as_bytes(),
        i: 0,
    };
    let mut out = Parsed::default();
    // enclosing calls: function name ("" for a plain parenthesis)
    let mut calls: Vec<String> = Vec::new();
    let mut pending_func: Option<String> = None;
    while lx.i < lx.s.len() {
        let b = lx.s[lx.i];
        match b {
            _ if b.is_ascii_whitespace() => lx.i += 1,
            b'"' | b'\'' | b'`' => lx.string()?,
            b'#' => {
                while lx.i < lx.s.len() && lx.s[lx.i] != b'\n' {
                    lx.i += 1;
                }
            }
            b'$' => {
                lx.i += 1;
                if lx.s.get(lx.i) == Some(&b'{') {
                    lx.skip_balanced(b'}')?;
                } else {
                    lx.ident();
                }
            }
            b'[' => lx.skip_balanced(b']')?,
            b'{' => {
                let labels = lx.matchers()?;
                return Err(format!(
                    "a selector without a metric name ({labels:?}): name the metric"
                ));
            }
            b'(' => {
                calls.push(pending_func.take().unwrap_or_default());
                lx.i += 1;
            }
            b')' => {
                calls.pop();
                lx.i += 1;
            }
            _ if b.is_ascii_digit()
                || (b == b'.' && lx.s.get(lx.i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                // a number or a duration (5m, 1e6, 0.8)
                while lx.i < lx.s.len()
                    && (lx.s[lx.i].is_ascii_alphanumeric() || lx.s[lx.i] == b'.')
                {
                    lx.i += 1;
                }
            }
            _ if is_ident_start(b) => {
                let word = lx.ident();
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    out.grouping.extend(lx.label_list()?);
                } else if KEYWORDS.contains(&lower.as_str()) {
                } else if AGGREGATIONS.contains(&lower.as_str())
                    || lx.peek_non_space() == Some(b'(')
                {
                    pending_func = Some(word);
                } else {
                    let func = calls.iter().rev().find(|f| !f.is_empty()).cloned();
                    let matchers = if lx.peek_non_space() == Some(b'{') {
                        lx.skip_space();
                        lx.matchers()?
                    } else {
                        Vec::new()
                    };
                    out.uses.push(Use {
                        name: word,
                        matchers,
                        func,
                    });
                }
            }
            _ => lx.i += 1, // operators, commas, @
        }
    }
    if !calls.is_empty() {
        return Err("unbalanced parentheses".into());
    }
    Ok(out)
}

/// `tally_...` words anywhere in the text: what the lexer must have found as metric names.
fn tally_words(text: &str) -> BTreeSet<String> {
    let s = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        if is_ident(s[i]) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let w = &text[start..i];
            if w.starts_with("tally_") {
                out.insert(w.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

// ------------------------------------------------------------------ the artefacts

/// One expression and where it came from.
struct Expr {
    origin: String,
    text: String,
}

/// The `expr:` values of a Prometheus rules file (plain scalars and `|`/`>` blocks, which is
/// what the file uses) and its recording rule names. Every rule must yield one expression.
fn rules_exprs(path: &std::path::Path) -> (Vec<Expr>, BTreeSet<String>) {
    let text = std::fs::read_to_string(path).expect("read the rules file");
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    let mut rules = 0;
    let mut current = String::new();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        for key in ["- alert:", "- record:"] {
            if let Some(name) = t.strip_prefix(key) {
                rules += 1;
                current = name.trim().to_string();
                if key == "- record:" {
                    records.insert(current.clone());
                }
            }
        }
        let Some(rest) = t.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        let body = if rest.starts_with('|') || rest.starts_with('>') {
            lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join("\n")
        } else if let Some(q) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            q.replace("\\\"", "\"").replace("\\\\", "\\")
        } else if let Some(q) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            q.replace("''", "'")
        } else {
            rest.split(" #").next().unwrap_or_default().to_string()
        };
        assert!(!body.trim().is_empty(), "{current}: empty expr");
        exprs.push(Expr {
            origin: format!("tally-alerts.yml {current}"),
            text: body,
        });
    }
    assert_eq!(
        exprs.len(),
        rules,
        "every alert and record rule must have one expr this test can read"
    );
    (exprs, records)
}

/// The dashboard's queries (panel targets, nested row panels included, and query variables),
/// after checking that it is an importable dashboard wired to the `DS_PROMETHEUS` input.
fn dashboard_exprs(path: &std::path::Path) -> Vec<Expr> {
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let ds = serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input"
    );
    assert!(d["title"].is_string() && d["uid"].is_string() && d["schemaVersion"].is_u64());
    let mut all = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        all.push(p);
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
    }
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in all {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel id twice: {title}"
        );
        assert!(
            p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64(),
            "{title}: gridPos"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], ds, "panel {title}: datasource");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"], ds, "panel {title}: target datasource");
            let e = t["expr"].as_str().expect("target expr");
            assert!(!e.trim().is_empty(), "panel {title}: empty expr");
            exprs.push(Expr {
                origin: format!("dashboard panel '{title}'"),
                text: e.to_string(),
            });
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        assert_eq!(v["datasource"], ds, "variable {}: datasource", v["name"]);
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .expect("variable query");
        exprs.push(Expr {
            origin: format!(
                "dashboard variable ${}",
                v["name"].as_str().unwrap_or_default()
            ),
            text: q.to_string(),
        });
    }
    exprs
}

/// PromQL of a Grafana variable query: `label_values(selector, label)` becomes the selector
/// grouped by the label; `query_result(expr)` the expression.
fn grafana_query(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Some(inner) = t
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (sel, label) = inner
            .rsplit_once(',')
            .ok_or("label_values() without a label")?;
        return Ok(format!("group by ({}) ({})", label.trim(), sel.trim()));
    }
    if let Some(inner) = t
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Ok(inner.to_string());
    }
    if t.starts_with("label_names(") || t.starts_with("metrics(") {
        return Err(format!("unsupported variable query {t}"));
    }
    Ok(t.to_string())
}

// ------------------------------------------------------------------ the exposition

#[derive(Debug, Default)]
struct Exposition {
    /// sample name -> label names seen on it
    samples: BTreeMap<String, BTreeSet<String>>,
    /// family name -> TYPE
    types: BTreeMap<String, String>,
}

fn parse_exposition(body: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                e.types.insert(n.to_string(), t.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let labels = e.samples.entry(name.to_string()).or_default();
        if line[end..].starts_with('{') {
            let mut lx = Lexer {
                s: line.as_bytes(),
                i: end,
            };
            labels.extend(lx.matchers().unwrap_or_default());
        }
    }
    e
}

impl Exposition {
    /// Whether `series` is the `_bucket`, `_sum` or `_count` series of a histogram (or the
    /// `_sum`/`_count` of a summary).
    fn is_histogram_part(&self, series: &str) -> bool {
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            series
                .strip_suffix(suffix)
                .and_then(|base| self.types.get(base))
                .is_some_and(|t| t == "histogram" || (t == "summary" && *suffix != "_bucket"))
        })
    }

    /// Why `u` is not a usable series name, or None.
    fn check(&self, u: &Use) -> Option<String> {
        let name = u.name.as_str();
        if !self.samples.contains_key(name) {
            return Some(match self.types.get(name).map(String::as_str) {
                Some(t @ ("histogram" | "summary")) => format!(
                    "{name} is a {t}: it has no series of its own name, use {name}_bucket, {name}_sum or {name}_count"
                ),
                Some(t) => format!("{name} ({t}) is declared but has no samples"),
                None => format!("{name} is not in the shipper's /metrics"),
            });
        }
        let histogram_part = self.is_histogram_part(name);
        let kind = self.types.get(name).map(String::as_str);
        match u.func.as_deref() {
            Some("rate" | "irate" | "increase" | "resets")
                if !(kind == Some("counter") || histogram_part) =>
            {
                return Some(format!(
                    "{name} ({kind:?}) under {}(): not a counter",
                    u.func.as_deref().unwrap_or_default()
                ));
            }
            Some("predict_linear" | "deriv" | "delta") if kind != Some("gauge") => {
                return Some(format!(
                    "{name} ({kind:?}) under {}(): not a gauge",
                    u.func.as_deref().unwrap_or_default()
                ));
            }
            _ => {}
        }
        let have = &self.samples[name];
        let bad: Vec<&String> = u
            .matchers
            .iter()
            .filter(|l| !have.contains(*l) && !TARGET_LABELS.contains(&l.as_str()))
            .collect();
        (!bad.is_empty()).then(|| format!("{name} has no label {bad:?} (it has {have:?})"))
    }
}

// ------------------------------------------------------------------ the test

/// Every problem with the names `exprs` use; empty when all resolve in `scrape`.
fn problems(
    exprs: &[Expr],
    scrape: &Exposition,
    records: &BTreeSet<String>,
    may_use_records: bool,
) -> (Vec<String>, BTreeSet<String>) {
    let mut out = Vec::new();
    let mut used = BTreeSet::new();
    for e in exprs {
        let text = if e.origin.starts_with("dashboard variable") {
            match grafana_query(&e.text) {
                Ok(t) => t,
                Err(err) => {
                    out.push(format!("{}: {err}", e.origin));
                    continue;
                }
            }
        } else {
            e.text.clone()
        };
        let parsed = match parse_promql(&text) {
            Ok(p) => p,
            Err(err) => {
                out.push(format!("{}: {err} in `{text}`", e.origin));
                continue;
            }
        };
        let found: BTreeSet<String> = parsed.uses.iter().map(|u| u.name.clone()).collect();
        for missed in tally_words(&text).difference(&found) {
            out.push(format!(
                "{}: `{missed}` appears in `{text}` but was not read as a metric name",
                e.origin
            ));
        }
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        for u in &parsed.uses {
            used.insert(u.name.clone());
            if SYNTHETIC.contains(&u.name.as_str()) {
                continue;
            }
            if records.contains(&u.name) {
                if !may_use_records {
                    out.push(format!(
                        "{}: uses the recording rule {} (the dashboard must work without the rules)",
                        e.origin, u.name
                    ));
                }
                continue;
            }
            match scrape.check(u) {
                Some(why) => out.push(format!("{}: {why}", e.origin)),
                None => labels.extend(scrape.samples[&u.name].iter().cloned()),
            }
        }
        for g in parsed.grouping.difference(&labels) {
            out.push(format!(
                "{}: groups or matches on `{g}`, a label none of its series has",
                e.origin
            ));
        }
    }
    (out, used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let _g = serial();
    let (rules, records) = rules_exprs(&deploy("prometheus/tally-alerts.yml"));
    let dash = dashboard_exprs(&deploy("grafana/tally-dashboard.json"));
    assert!(
        rules.len() > 10 && dash.len() > 10,
        "too few expressions read"
    );

    let Some(ModuleStack {
        redis,
        pg,
        pool,
        mut c,
    }) = module_stack("every_metric_the_alerts_and_the_dashboard_use_is_exported").await
    else {
        return;
    };
    // Events before the shipper starts (a backlog) and while it runs.
    let before: &[&[&str]] = &[
        &["ASSET.INCR", "acct:1", "gold", "10.5", "gems", "2"],
        &["ASSET.INCR", "acct:2", "gold", "1"],
        &[
            "ASSET.TRANSFER",
            "acct:1",
            "acct:2",
            "gold",
            "0.5",
            "ID",
            "t-1",
        ],
        &["COUPON.CREATE", "camp", "10"],
        &["COUPON.CLAIM", "camp", "alice"],
    ];
    for args in before {
        cmd(&mut c, args).await;
    }
    let dir = tmpdir("metrics-contract");
    let mut sh = Shipper::spawn(
        &base_args("run", Some(&redis.url()), Some(&pg.url()), None),
        &dir.join("shipper.log"),
    );
    sh.wait_ready(Duration::from_secs(60));
    let after: &[&[&str]] = &[
        &["COUPON.RELEASE", "camp", "alice"],
        &["USAGE.LIMIT", "quota", "100", "PERIOD", "day"],
        &["USAGE.CONSUME", "quota", "2.5", "META", "m"],
        &["ASSET.INCR", "acct:1", "gold", "-1"],
    ];
    for args in after {
        cmd(&mut c, args).await;
    }
    let n = (before.len() + after.len()) as i64;
    let got = wait_count(
        &pool,
        "SELECT count(*) FROM events",
        n,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        got,
        n,
        "events not persisted; log:\n{}",
        tail_lines(&sh.log_text(), 40)
    );

    // Poll until every name resolves (the stream sampler runs on its own timer) or 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (scrape, rule_problems, dash_problems, used) = loop {
        let (status, body) =
            http_get_blocking(&sh.metrics_addr, "/metrics").expect("/metrics answers");
        assert_eq!(status, 200, "/metrics: {body}");
        let scrape = parse_exposition(&body);
        let (rp, mut used) = problems(&rules, &scrape, &records, true);
        let (dp, dused) = problems(&dash, &scrape, &records, false);
        used.extend(dused);
        if (rp.is_empty() && dp.is_empty()) || Instant::now() > deadline {
            break (scrape, rp, dp, used);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        rule_problems.is_empty() && dash_problems.is_empty(),
        "names that do not resolve against the shipper's /metrics:\n{}\n\nexported: {:?}",
        rule_problems
            .iter()
            .chain(&dash_problems)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        scrape.samples.keys().collect::<Vec<_>>()
    );
    // The scrape is the shipper's own, after the events above.
    let persisted = sh.metric("tally_events_persisted_total");
    assert_eq!(persisted, Some(n as f64));
    eprintln!("checked {} names: {used:?}", used.len());
    // The operator artefacts cover the pipeline: the list is used somewhere.
    for name in [
        "up",
        "tally_stream_lag_seconds",
        "tally_stream_length",
        "tally_delivery_failures_total",
        "tally_events_failed_total",
        "tally_failed_events_unresolved",
        "tally_seq_anomalies_total",
        "tally_kafka_partitions_assigned",
        "tally_events_read_total",
        "tally_events_forwarded_total",
        "tally_events_persisted_total",
        "tally_batch_seconds_bucket",
        "tally_end_to_end_lag_seconds",
    ] {
        assert!(
            used.contains(name),
            "{name} is used by neither the alerts nor the dashboard"
        );
    }
    sh.sigterm();
    let st = sh
        .wait_timeout(Duration::from_secs(30))
        .expect("shipper exits");
    assert!(st.success(), "exit status {st:?}");
}

/// The checker itself: names that must be refused are refused.
#[test]
fn the_checker_refuses_made_up_names_bare_histograms_and_wrong_labels() {
    let body = "# HELP tally_a_total a\n# TYPE tally_a_total counter\ntally_a_total 1\n\
                # HELP tally_g g\n# TYPE tally_g gauge\ntally_g{stream=\"s\"} 2\n\
                # HELP tally_h h\n# TYPE tally_h histogram\n\
                tally_h_bucket{stage=\"p\",le=\"1\"} 1\ntally_h_bucket{stage=\"p\",le=\"+Inf\"} 1\n\
                tally_h_sum{stage=\"p\"} 0.5\ntally_h_count{stage=\"p\"} 1\n";
    let scrape = parse_exposition(body);
    let records = BTreeSet::from(["tally:max".to_string()]);
    let check = |text: &str, records_ok: bool| {
        let e = [Expr {
            origin: "t".into(),
            text: text.into(),
        }];
        problems(&e, &scrape, &records, records_ok).0
    };
    let good = [
        "sum(rate(tally_a_total[5m])) > 0",
        "max by (stream) (tally_g{job=~\"$job\", stream=~\"$stream\"}) > on() group_left() (0.8 * tally:max > 0)",
        "histogram_quantile(0.99, sum by (le, stage) (rate(tally_h_bucket[$__rate_interval])))",
        "sum by (stage) (rate(tally_h_sum[5m])) / sum by (stage) (rate(tally_h_count[5m]))",
        "up{job=\"tally-shipper\"} == 0",
        "max by (stream) (predict_linear(tally_g[30m], 3600))",
        "vector($max_backlog)",
    ];
    for g in good {
        assert_eq!(check(g, true), Vec::<String>::new(), "{g}");
    }
    let bad = [
        ("tally_nope_total > 0", "not in the shipper"),
        ("rate(tally_h[5m])", "no series of its own name"),
        ("tally_g{stage=\"x\"}", "no label"),
        ("sum by (stage) (tally_g)", "a label none of its series has"),
        ("rate(tally_g[5m])", "not a counter"),
        ("predict_linear(tally_a_total[5m], 60)", "not a gauge"),
        ("{__name__=\"tally_g\"}", "without a metric name"),
        (
            "vector(tally:max)",
            "the dashboard must work without the rules",
        ),
        ("sum(rate(tally_a_total[5m]", "unbalanced"),
        ("process_start_time_seconds", "not in the shipper"),
    ];
    for (b, why) in bad {
        let p = check(b, false);
        assert!(
            p.iter().any(|m| m.contains(why)),
            "{b}: expected '{why}', got {p:?}"
        );
    }
    assert_eq!(
        grafana_query("label_values(tally_g{job=~\"$job\"}, stream)")
            .ok()
            .as_deref(),
        Some("group by (stream) (tally_g{job=~\"$job\"})")
    );
}
