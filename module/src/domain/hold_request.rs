//! Arguments of the hold commands (docs/holds.md), parsed like every other command's
//! (`request`): positional arguments, then options in any order; `TTL ms` is a required
//! option.

use crate::domain::decimal::Decimal;
use crate::domain::error::CmdError;
use crate::domain::holds::{self, MAX_TTL_MS, MIN_TTL_MS};
use crate::domain::request::{
    balance_field, decimal, integer, meta_part, name, Canonical, Common, Options, MAX_TOTAL,
};
use crate::domain::rules::Floor;

/// `ASSET.HOLD key field amount TTL ms [FLOOR n | NOFLOOR]`, `USAGE.RESERVE key amount TTL ms`
/// (field empty) and `COUPON.RESERVE campaign user TTL ms` (field = user, amount 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub key: String,
    pub subject: String,
    pub amount: Decimal,
    pub ttl_ms: i64,
    pub floor: Floor,
    pub common: Common,
}

/// A command on an open hold: `key hold-id [amount]` (settle, void, commit, cancel) or
/// `campaign user issue` (confirm, cancel; `user` set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub key: String,
    pub user: Option<String>,
    pub id: String,
    pub amount: Option<Decimal>,
    pub common: Common,
}

fn ttl(o: &mut Options) -> Result<i64, CmdError> {
    integer("TTL", o.value("TTL")?, MIN_TTL_MS, MAX_TTL_MS)
}

fn missing_ttl() -> CmdError {
    CmdError::err("TTL ms is required")
}

/// `ASSET.HOLD key field amount TTL ms [FLOOR n | NOFLOOR] [ID op-id] [META text]`
pub fn asset_hold(args: &[&[u8]]) -> Result<Open, CmdError> {
    if args.len() < 5 {
        return Err(CmdError::Arity);
    }
    let key = name("key", args[0])?;
    let subject = balance_field(args[1])?;
    let amount = positive("amount", args[2])?;
    let (mut ttl_ms, mut floor) = (None, Floor::Default);
    let mut common = Common::default();
    Options::new(args, 3).parse(&mut common, |opt, o| {
        match opt {
            "TTL" => ttl_ms = Some(ttl(o)?),
            "FLOOR" | "NOFLOOR" if floor != Floor::Default => {
                return Err(CmdError::err("FLOOR and NOFLOOR exclude each other"))
            }
            "FLOOR" => floor = Floor::At(decimal("FLOOR", o.value("FLOOR")?)?),
            "NOFLOOR" => floor = Floor::None,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(Open {
        key,
        subject,
        amount,
        ttl_ms: ttl_ms.ok_or_else(missing_ttl)?,
        floor,
        common,
    })
}

/// `USAGE.RESERVE key amount TTL ms [ID op-id] [META text]`
pub fn usage_reserve(args: &[&[u8]]) -> Result<Open, CmdError> {
    if args.len() < 4 {
        return Err(CmdError::Arity);
    }
    let key = name("key", args[0])?;
    let amount = positive("amount", args[1])?;
    let (ttl_ms, common) = ttl_only(args, 2)?;
    Ok(Open {
        key,
        subject: String::new(),
        amount,
        ttl_ms,
        floor: Floor::Default,
        common,
    })
}

/// `COUPON.RESERVE campaign user TTL ms [ID op-id] [META text]`
pub fn coupon_reserve(args: &[&[u8]]) -> Result<Open, CmdError> {
    if args.len() < 4 {
        return Err(CmdError::Arity);
    }
    let key = name("campaign", args[0])?;
    let user = coupon_user(args[1])?;
    let (ttl_ms, common) = ttl_only(args, 2)?;
    Ok(Open {
        key,
        subject: user,
        amount: Decimal::from_int(1),
        ttl_ms,
        floor: Floor::Default,
        common,
    })
}

fn coupon_user(raw: &[u8]) -> Result<String, CmdError> {
    let user = name("user", raw)?;
    if user.contains(',') {
        return Err(CmdError::err("user must not contain ','"));
    }
    Ok(user)
}

fn positive(what: &str, raw: &[u8]) -> Result<Decimal, CmdError> {
    let amount = decimal(what, raw)?;
    if !amount.is_positive() {
        return Err(CmdError::err(format!("{what} must be positive")));
    }
    Ok(amount)
}

fn ttl_only(args: &[&[u8]], from: usize) -> Result<(i64, Common), CmdError> {
    let mut ttl_ms = None;
    let mut common = Common::default();
    Options::new(args, from).parse(&mut common, |opt, o| {
        if opt != "TTL" {
            return Ok(false);
        }
        ttl_ms = Some(ttl(o)?);
        Ok(true)
    })?;
    Ok((ttl_ms.ok_or_else(missing_ttl)?, common))
}

fn is_option_word(raw: &[u8]) -> bool {
    raw.eq_ignore_ascii_case(b"ID") || raw.eq_ignore_ascii_case(b"META")
}

/// `ASSET.SETTLE|USAGE.COMMIT key hold-id [amount]` (`with_amount`) and
/// `ASSET.VOID|USAGE.CANCEL key hold-id`, then `[ID op-id] [META text]`.
pub fn close(args: &[&[u8]], with_amount: bool) -> Result<Close, CmdError> {
    if args.len() < 2 {
        return Err(CmdError::Arity);
    }
    let key = name("key", args[0])?;
    let id = holds::hold_id(args[1])?;
    let mut amount = None;
    let mut next = 2;
    if let Some(raw) = args.get(2).filter(|r| with_amount && !is_option_word(r)) {
        amount = Some(decimal("amount", raw)?);
        next = 3;
    }
    let mut common = Common::default();
    Options::new(args, next).parse(&mut common, |_, _| Ok(false))?;
    Ok(Close {
        key,
        user: None,
        id,
        amount,
        common,
    })
}

/// `COUPON.CONFIRM|CANCEL campaign user issue-number [ID op-id] [META text]`
pub fn coupon_close(args: &[&[u8]]) -> Result<Close, CmdError> {
    if args.len() < 3 {
        return Err(CmdError::Arity);
    }
    let key = name("campaign", args[0])?;
    let user = coupon_user(args[1])?;
    let issue = integer("issue number", args[2], 1, MAX_TOTAL)?;
    let mut common = Common::default();
    Options::new(args, 3).parse(&mut common, |_, _| Ok(false))?;
    Ok(Close {
        key,
        user: Some(user),
        id: issue.to_string(),
        amount: None,
        common,
    })
}

impl Canonical for Open {
    fn canonical(&self) -> Vec<Vec<u8>> {
        vec![
            self.key.clone().into_bytes(),
            self.subject.clone().into_bytes(),
            self.amount.to_string().into_bytes(),
            self.ttl_ms.to_string().into_bytes(),
            match self.floor {
                Floor::Default => b"floor=0".to_vec(),
                Floor::At(f) if f.is_zero() => b"floor=0".to_vec(),
                Floor::At(f) => format!("floor={f}").into_bytes(),
                Floor::None => b"nofloor".to_vec(),
            },
            meta_part(&self.common),
        ]
    }
}

impl Canonical for Close {
    fn canonical(&self) -> Vec<Vec<u8>> {
        vec![
            self.key.clone().into_bytes(),
            self.user.clone().unwrap_or_default().into_bytes(),
            self.id.clone().into_bytes(),
            self.amount
                .map_or(b"-".to_vec(), |a| a.to_string().into_bytes()),
            meta_part(&self.common),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    fn parse<T>(s: &str, f: impl Fn(&[&[u8]]) -> Result<T, CmdError>) -> Result<T, CmdError> {
        let owned = args(s);
        let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        f(&refs)
    }

    #[test]
    fn asset_hold_options_in_any_order() {
        let a = parse("acct gold 30 TTL 60000 ID op1 NOFLOOR", asset_hold).unwrap();
        let b = parse("acct gold 30.0 nofloor id op1 ttl 60000", asset_hold).unwrap();
        assert_eq!(
            (&a.key, &a.subject, a.amount),
            (&b.key, &b.subject, b.amount)
        );
        assert_eq!(a.ttl_ms, 60_000);
        assert_eq!(a.floor, Floor::None);
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn bad_hold_arguments_are_refused() {
        for bad in [
            "acct gold 30",
            "acct gold 30 TTL 0",
            "acct gold 30 TTL -5",
            "acct gold 30 TTL 2592000001",
            "acct gold 0 TTL 10",
            "acct gold -1 TTL 10",
            "acct kind 1 TTL 10",
            "acct gold 1 TTL 10 FLOOR 1 NOFLOOR",
            "acct gold 1 TTL 10 TTL 11",
        ] {
            assert!(parse(bad, asset_hold).is_err(), "{bad}");
        }
        assert!(parse("acct gold 1 TTL 2592000000", asset_hold).is_ok());
        assert!(parse("q 5 TTL 0", usage_reserve).is_err());
        assert!(parse("c u,v TTL 10", coupon_reserve).is_err());
    }

    #[test]
    fn close_takes_an_optional_amount_before_the_options() {
        let c = parse("acct 7 25 ID x", |a| close(a, true)).unwrap();
        assert_eq!(c.amount, Some(Decimal::from_int(25)));
        assert_eq!(c.common.op_id.as_deref(), Some("x"));
        let all = parse("acct 7 id x", |a| close(a, true)).unwrap();
        assert_eq!(all.amount, None);
        assert!(parse("acct 7 25", |a| close(a, false)).is_err());
        assert!(parse("acct 007", |a| close(a, false)).is_err());
        assert!(parse(&format!("acct {}", "9".repeat(40)), |a| close(a, false)).is_err());
        let cc = parse("camp alice 12 META m", coupon_close).unwrap();
        assert_eq!((cc.id.as_str(), cc.user.as_deref()), ("12", Some("alice")));
        assert!(parse("camp alice 0", coupon_close).is_err());
    }
}
