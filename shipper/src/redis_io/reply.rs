//! Redis replies as the shipper reads them: stream entries and the few value shapes of
//! XREADGROUP, XAUTOCLAIM, XINFO and CLUSTER SLOTS (RESP2 and RESP3).

use redis::Value;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) id: String,
    /// None when the entry was deleted while pending
    pub(crate) fields: Option<Vec<(String, Vec<u8>)>>,
}

pub(crate) fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_str(other)?.parse().ok(),
    }
}

pub(crate) fn as_array(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// Parse a list of stream entries `[[id, [f, v, ...]], ...]`.
pub(crate) fn parse_entries(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in as_array(v) {
        let parts = as_array(e);
        let Some(id) = parts.first().and_then(as_str) else {
            continue;
        };
        let fields = match parts.get(1) {
            Some(Value::Array(kv)) => {
                let mut f = Vec::new();
                for pair in kv.chunks(2) {
                    if let [k, v] = pair {
                        let val = match v {
                            Value::BulkString(b) => b.clone(),
                            other => as_str(other).unwrap_or_default().into_bytes(),
                        };
                        f.push((as_str(k).unwrap_or_default(), val));
                    }
                }
                Some(f)
            }
            Some(Value::Map(kv)) => Some(
                kv.iter()
                    .map(|(k, v)| {
                        (
                            as_str(k).unwrap_or_default(),
                            as_str(v).unwrap_or_default().into_bytes(),
                        )
                    })
                    .collect(),
            ),
            _ => None,
        };
        out.push(Entry { id, fields });
    }
    out
}

/// A bulk-string reply, for the tests of every module that parses replies.
#[cfg(test)]
pub(crate) fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}
