//! A key's holds hash (docs/holds.md, "Layout in Redis") read and written through a
//! command's [`Tx`]: open holds, per-subject totals, the open count and earliest deadline,
//! tombstones, and the due-index member of each hold.

use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::holds::{self, Hold, Status, FIELD_DEADLINE, FIELD_LAST_ID, FIELD_OPEN};
use crate::domain::rules;
use crate::domain::text::IntText;
use crate::host::config;
use crate::host::tx::Tx;

/// The holds of one data key.
pub(crate) struct Store {
    key: String,
    holds: String,
}

fn int_field(raw: Option<&[u8]>, what: &str) -> Result<i64, CmdError> {
    match raw {
        None => Ok(0),
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| CmdError::wrong_type(format!("the holds' {what} field is corrupt"))),
    }
}

impl Store {
    pub(crate) fn new(tx: &Tx, key: &str) -> Store {
        Store {
            key: key.to_string(),
            holds: tx.holds_key(key),
        }
    }

    /// The open hold `id`, if it is open.
    pub(crate) fn find(&self, tx: &mut Tx, id: &str) -> Result<Option<Hold>, CmdError> {
        let raw = tx.hget_with(&self.holds, &holds::open_field(id), |v| {
            v.map(<[u8]>::to_vec)
        })?;
        raw.map(|r| Hold::parse(&r)).transpose()
    }

    /// The open hold `id`, or NOTFOUND with the reason it is not open.
    pub(crate) fn require(&self, tx: &mut Tx, id: &str) -> Result<Hold, CmdError> {
        if let Some(h) = self.find(tx, id)? {
            return Ok(h);
        }
        let closed = tx.hget_with(&self.holds, &holds::closed_field(id), |v| {
            v.and_then(holds::parse_closed)
        })?;
        Err(holds::not_found(id, closed.map(|(s, _)| s)))
    }

    /// The sum of the open holds of `subject`.
    pub(crate) fn total(&self, tx: &mut Tx, subject: &str) -> Result<Decimal, CmdError> {
        tx.hget_with(&self.holds, &holds::total_field(subject), |raw| {
            rules::stored_decimal("the holds' total", raw)
        })?
    }

    fn set_total(&self, tx: &mut Tx, subject: &str, total: Decimal) {
        let value = (!total.is_zero()).then(|| total.to_string());
        let field = holds::total_field(subject);
        tx.set(&self.holds, &field, value.as_deref().map(str::as_bytes));
    }

    /// A new id from the key's counter (asset and usage holds).
    pub(crate) fn new_id(&self, tx: &mut Tx) -> Result<String, CmdError> {
        let last = tx.hget_with(&self.holds, FIELD_LAST_ID, |v| v.map(<[u8]>::to_vec))?;
        let (_, id) = holds::next_id(last.as_deref())?;
        tx.set(&self.holds, FIELD_LAST_ID, Some(id.as_bytes()));
        Ok(id)
    }

    /// Opens hold `id`: HOLDLIMIT when the key has `tally.max-holds-per-key` open.
    pub(crate) fn add(&self, tx: &mut Tx, id: &str, hold: &Hold) -> Result<(), CmdError> {
        super::expiry::note_due(tx.ctx, &self.key);
        let open = tx.hget_with(&self.holds, FIELD_OPEN, |v| int_field(v, "open"))??;
        let max = config::max_holds_per_key();
        if open >= max {
            return Err(CmdError::code(
                "HOLDLIMIT",
                format!("this key has {open} open holds (tally.max-holds-per-key is {max})"),
            ));
        }
        let deadline = tx.hget_with(&self.holds, FIELD_DEADLINE, |v| {
            v.map(|b| int_field(Some(b), "deadline"))
        })?;
        if deadline.transpose()?.is_none_or(|d| hold.expires_ms < d) {
            let text = IntText::new(hold.expires_ms);
            tx.set(&self.holds, FIELD_DEADLINE, Some(text.as_bytes()));
        }
        tx.set(
            &self.holds,
            FIELD_OPEN,
            Some(IntText::new(open + 1).as_bytes()),
        );
        let total = self.total(tx, &hold.subject)?;
        let sum = total
            .checked_add(hold.amount)
            .ok_or_else(|| CmdError::err("the held total would overflow 20 integer digits"))?;
        self.set_total(tx, &hold.subject, sum);
        let record = hold.encode();
        tx.set(&self.holds, &holds::open_field(id), Some(record.as_bytes()));
        tx.due_add(&holds::due_member(&self.key, id), hold.expires_ms);
        Ok(())
    }

    /// Closes open hold `id` as `status`: its amount leaves the subject's total; a tombstone
    /// keeps the outcome for `tally.hold-tombstone-ms`, then the timer removes it.
    pub(crate) fn close(
        &self,
        tx: &mut Tx,
        id: &str,
        hold: &Hold,
        status: Status,
    ) -> Result<(), CmdError> {
        let open = tx.hget_with(&self.holds, FIELD_OPEN, |v| int_field(v, "open"))??;
        if open <= 1 {
            tx.set(&self.holds, FIELD_OPEN, None);
            tx.set(&self.holds, FIELD_DEADLINE, None);
        } else {
            tx.set(
                &self.holds,
                FIELD_OPEN,
                Some(IntText::new(open - 1).as_bytes()),
            );
        }
        let total = self.total(tx, &hold.subject)?;
        let rest = total.checked_sub(hold.amount).unwrap_or(Decimal::ZERO);
        let rest = if rest.is_negative() {
            Decimal::ZERO
        } else {
            rest
        };
        self.set_total(tx, &hold.subject, rest);
        tx.set(&self.holds, &holds::open_field(id), None);
        let member = holds::due_member(&self.key, id);
        let keep_ms = config::hold_tombstone_ms();
        if keep_ms > 0 {
            let tomb = holds::encode_closed(status, tx.now_ms);
            tx.set(&self.holds, &holds::closed_field(id), Some(tomb.as_bytes()));
            tx.due_add(&member, tx.now_ms.saturating_add(keep_ms));
        } else {
            tx.due_remove(&member);
        }
        Ok(())
    }
}
