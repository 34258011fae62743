//! Error replies. The first word is a stable code clients can match on; the rest is a
//! human sentence. Messages never contain raw client bytes (see `text::printable`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdError {
    Arity,
    /// A stable code (`INSUFFICIENT`, `SOLDOUT`, ...) and a sentence.
    Coded(&'static str, String),
}

pub const CODES: [&str; 13] = [
    "INSUFFICIENT",
    "SOLDOUT",
    "DUPLICATE",
    "NOTFOUND",
    "CLOSED",
    "LIMIT",
    "CONFLICT",
    "BACKLOG",
    "OPIDS",
    "WRONGTYPE",
    "NOPERM",
    "HOLDLIMIT",
    "ERR",
];

impl CmdError {
    pub fn err(msg: impl Into<String>) -> CmdError {
        CmdError::Coded("ERR", msg.into())
    }
    pub fn code(code: &'static str, msg: impl Into<String>) -> CmdError {
        CmdError::Coded(code, msg.into())
    }
    pub fn wrong_type(msg: impl Into<String>) -> CmdError {
        CmdError::Coded("WRONGTYPE", msg.into())
    }
    pub fn code_name(&self) -> &'static str {
        match self {
            CmdError::Arity => "ERR",
            CmdError::Coded(c, _) => c,
        }
    }
}

impl fmt::Display for CmdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdError::Arity => f.write_str("ERR wrong number of arguments"),
            // NUL would truncate the C string of the reply: never let one through.
            CmdError::Coded(code, msg) => {
                write!(f, "{code} {}", msg.replace(['\0', '\r', '\n'], " "))
            }
        }
    }
}
