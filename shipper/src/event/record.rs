//! A unit of work flowing through the pipeline: one stream entry or one Kafka message.

use super::decode::{self, Event};

#[derive(Debug, Clone)]
pub(crate) struct Record {
    /// Identity of the origin, unique: `redis:<stream>/<id>` or `kafka:<topic>/<p>/<offset>`.
    pub(crate) source: String,
    /// Kafka coordinates when the record came through Kafka.
    pub(crate) via: Option<String>,
    pub(crate) stream: Option<String>,
    pub(crate) stream_id: Option<String>,
    /// Payload text as received.
    pub(crate) raw: String,
    pub(crate) decoded: Result<Event, String>,
}

/// Where a record came from: the columns stored with it (events, failed_events).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Origin {
    /// Identity of the origin, unique: `redis:<stream>/<id>` or `kafka:<topic>/<p>/<offset>`.
    pub(crate) source: String,
    /// Kafka coordinates when the record came through Kafka.
    pub(crate) via: Option<String>,
    /// The log stream and the entry id in it, when known.
    pub(crate) stream: Option<String>,
    pub(crate) stream_id: Option<String>,
}

impl Origin {
    /// Entry `id` of the log stream `stream`, read from Redis: `redis:<stream>/<id>`.
    pub(crate) fn stream_entry(stream: &str, id: String) -> Origin {
        Origin {
            source: format!("redis:{stream}/{id}"),
            via: None,
            stream: Some(stream.to_string()),
            stream_id: Some(id),
        }
    }
}

impl Record {
    /// Build from a payload as received; an error already known upstream (e.g. a stream
    /// entry without `event` field) wins over decoding.
    pub(crate) fn new(origin: Origin, raw: String, upstream_error: Option<String>) -> Record {
        let decoded = match upstream_error {
            Some(e) => Err(e),
            None => decode::decode(&raw),
        };
        let Origin {
            source,
            via,
            stream,
            stream_id,
        } = origin;
        Record {
            source,
            via,
            stream,
            stream_id,
            raw,
            decoded,
        }
    }
}

/// Redis stream id `<ms>-<n>` -> (ms, n).
pub(crate) fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The smallest id strictly greater than `id`.
pub(crate) fn next_stream_id(id: &str) -> Option<String> {
    let (ms, n) = parse_stream_id(id)?;
    Some(if n == u64::MAX {
        format!("{}-0", ms + 1)
    } else {
        format!("{ms}-{}", n + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids() {
        assert_eq!(parse_stream_id("1732272000123-5"), Some((1732272000123, 5)));
        assert_eq!(parse_stream_id("x-5"), None);
        assert_eq!(next_stream_id("10-5").as_deref(), Some("10-6"));
        assert_eq!(
            next_stream_id(&format!("10-{}", u64::MAX)).as_deref(),
            Some("11-0")
        );
    }

    #[test]
    fn upstream_error_wins() {
        let origin = |source: &str| Origin {
            source: source.into(),
            ..Origin::default()
        };
        let r = Record::new(
            origin("redis:s/1-0"),
            "{}".into(),
            Some("no event field".into()),
        );
        assert_eq!(r.decoded.unwrap_err(), "no event field");
        let r = Record::new(origin("redis:s/1-0"), "{".into(), None);
        assert!(r.decoded.unwrap_err().contains("invalid event JSON"));
    }
}
