//! A stream's entries as the records handed downstream.

use crate::event::Record;
use crate::redis_io::Entry;

/// Convert an entry to a pipeline record (never fails: problems become the record's error).
/// The entry is consumed: its `event` bytes become the record's text without a copy.
pub(super) fn entry_to_record(stream: &str, e: Entry) -> Record {
    let source = format!("redis:{stream}/{}", e.id);
    let (raw, err) = match e.fields {
        None => (
            "".to_string(),
            Some("stream entry was deleted before it could be shipped".to_string()),
        ),
        Some(mut fields) => match fields.iter().position(|(k, _)| k == "event") {
            Some(i) => match String::from_utf8(fields.swap_remove(i).1) {
                Ok(s) => (s, None),
                Err(v) => (
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    Some("`event` field is not UTF-8".to_string()),
                ),
            },
            None => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                (
                    serde_json::Value::Object(obj).to_string(),
                    Some("stream entry has no `event` field".to_string()),
                )
            }
        },
    };
    Record::new(source, None, Some(stream.to_string()), Some(e.id), raw, err)
}
