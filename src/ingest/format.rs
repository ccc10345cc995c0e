//! The formats a body may come in, named by its `Content-Type`.

use crate::telemetry::IngestFormat;

/// How a body is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON value (`application/json`, and any `+json` type but
    /// `wrp+json`).
    Json,
    /// One JSON event per line (`application/x-ndjson`), a result per line.
    Ndjson,
    /// One WRP message as msgpack (`application/msgpack`, `wrp+msgpack`,
    /// `application/wrp`).
    WrpMsgpack,
    /// One WRP message in its JSON form (`application/wrp+json`).
    WrpJson,
}

impl Format {
    /// The format a `Content-Type` names (parameters ignored), compared
    /// without case and without a lowercased copy.
    pub fn of(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next()?.trim();
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        Some(if is("application/json") {
            Self::Json
        } else if is("application/wrp+json") {
            Self::WrpJson
        } else if [
            "application/msgpack",
            "application/x-msgpack",
            "application/wrp+msgpack",
            "application/wrp",
        ]
        .into_iter()
        .any(is)
        {
            Self::WrpMsgpack
        } else if [
            "application/x-ndjson",
            "application/ndjson",
            "application/jsonl",
        ]
        .into_iter()
        .any(is)
        {
            Self::Ndjson
        } else if essence
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && essence
                .get(essence.len().saturating_sub(5)..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
        {
            Self::Json
        } else {
            return None;
        })
    }

    /// Its label on the ingest metrics.
    pub fn label(self) -> IngestFormat {
        match self {
            Self::Json => IngestFormat::Json,
            Self::Ndjson => IngestFormat::Ndjson,
            Self::WrpMsgpack => IngestFormat::WrpMsgpack,
            Self::WrpJson => IngestFormat::WrpJson,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_map_to_formats() {
        for (content_type, format) in [
            ("application/json; charset=utf-8", Some(Format::Json)),
            ("Application/CloudEvents+JSON", Some(Format::Json)),
            ("application/wrp+json", Some(Format::WrpJson)),
            ("application/msgpack", Some(Format::WrpMsgpack)),
            ("application/wrp+msgpack", Some(Format::WrpMsgpack)),
            ("application/x-ndjson", Some(Format::Ndjson)),
            ("text/plain", None),
            ("", None),
        ] {
            assert_eq!(Format::of(content_type), format, "{content_type}");
        }
    }
}
