//! Exact money: the decimal text of a JSON number or numeric string, rewritten in plain notation.
//!
//! Owns the grammar of an amount and its normalization (`1e3` → `1000`). Does not own reading
//! the field (see `fields`): this works on text only, so an amount never passes through `f64`
//! and `99.9` stays `99.9` (`docs/wire-format.md` "Money": money is never a float).

/// The largest exponent accepted in an amount. Normalizing writes one digit per unit of
/// exponent, so without a bound `1e999999999` would allocate a gigabyte of zeros; no real amount
/// is anywhere near 10^100.
const MAX_EXPONENT: i64 = 100;

/// An amount split into its parts: `-12.30e2` is negative, `12`, `30`, exponent 2.
struct Parts<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
    exponent: i64,
}

/// Rewrites a decimal number (`-`? digits (`.` digits)? (`e` sign? digits)?) in plain notation.
///
/// Digits are kept as written, trailing zeros included (`99.90` stays `99.90`); only the
/// exponent is folded in (`2.5E-2` → `0.025`) and redundant leading zeros of the integer part
/// are dropped. Returns what is wrong with the text otherwise.
pub(super) fn normalize_decimal(text: &str) -> Result<String, String> {
    let parts = split(text)?;
    Ok(shift(&parts))
}

/// Checks the grammar and splits `text` into its parts.
fn split(text: &str) -> Result<Parts<'_>, String> {
    let not_decimal = || format!("expected a decimal number, got {:?}", shorten(text));
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent_text) = match unsigned.find(['e', 'E']) {
        Some(at) => (
            unsigned.get(..at).unwrap_or_default(),
            unsigned.get(at + 1..),
        ),
        None => (unsigned, None),
    };
    let (integer, fraction) = match mantissa.split_once('.') {
        Some((integer, fraction)) => {
            if !is_digits(fraction) {
                return Err(not_decimal());
            }
            (integer, fraction)
        }
        None => (mantissa, ""),
    };
    if !is_digits(integer) {
        return Err(not_decimal());
    }
    let exponent = match exponent_text {
        Some(exponent_text) => parse_exponent(exponent_text).ok_or_else(not_decimal)?,
        None => 0,
    };
    if exponent.abs() > MAX_EXPONENT {
        return Err(format!(
            "exponent out of range (at most {MAX_EXPONENT}): {:?}",
            shorten(text)
        ));
    }
    Ok(Parts {
        negative,
        integer,
        fraction,
        exponent,
    })
}

/// Parses an exponent (`+3`, `-02`, `7`). Anything longer than a few digits is saturated rather
/// than parsed, so that the range check rejects it without overflow.
fn parse_exponent(text: &str) -> Option<i64> {
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'+') => (1, text.get(1..)?),
        Some(b'-') => (-1, text.get(1..)?),
        _ => (1, text),
    };
    if !is_digits(digits) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 6 {
        return Some(sign * (MAX_EXPONENT + 1));
    }
    let magnitude: i64 = if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    };
    Some(sign * magnitude)
}

/// Writes `parts` in plain notation, moving the decimal point by the exponent.
fn shift(parts: &Parts<'_>) -> String {
    let digits = format!("{}{}", parts.integer, parts.fraction);
    // Where the decimal point falls in `digits` once the exponent is applied.
    let point = i64::try_from(parts.integer.len()).unwrap_or(i64::MAX) + parts.exponent;
    let length = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    let (integer, fraction) = if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).unwrap_or_default());
        (String::new(), format!("{zeros}{digits}"))
    } else if point >= length {
        let zeros = "0".repeat(usize::try_from(point - length).unwrap_or_default());
        (format!("{digits}{zeros}"), String::new())
    } else {
        let at = usize::try_from(point).unwrap_or_default();
        let (integer, fraction) = digits.split_at_checked(at).unwrap_or((&digits, ""));
        (integer.to_owned(), fraction.to_owned())
    };
    let integer = match integer.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let sign = if parts.negative { "-" } else { "" };
    if fraction.is_empty() {
        format!("{sign}{integer}")
    } else {
        format!("{sign}{integer}.{fraction}")
    }
}

/// True when `text` is one or more ASCII digits.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// The start of `text`, so that an error message stays short whatever the producer sent.
fn shorten(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(at, _)| at);
    text.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::normalize_decimal;

    #[test]
    fn plain_decimals_keep_their_digits_exactly() {
        for (input, expected) in [
            ("99.9", "99.9"),
            ("99.90", "99.90"),
            ("100", "100"),
            ("-0.5", "-0.5"),
            ("12.30", "12.30"),
            ("0", "0"),
            ("007.50", "7.50"),
        ] {
            assert_eq!(normalize_decimal(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn exponents_are_folded_into_plain_notation() {
        for (input, expected) in [
            ("1e3", "1000"),
            ("2.5E-2", "0.025"),
            ("1.50e1", "15.0"),
            ("1.5e+3", "1500"),
            ("-1.25e1", "-12.5"),
            ("0.025e-1", "0.0025"),
            ("0e5", "0"),
            ("5e0", "5"),
            ("12e-2", "0.12"),
            ("1e100", &format!("1{}", "0".repeat(100))),
        ] {
            assert_eq!(normalize_decimal(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn text_that_is_not_a_decimal_is_refused() {
        for input in [
            "", "-", "abc", "1.", ".5", "+5", "1e", "1e+", "1.2.3", "NaN", "inf", " 1", "1 ",
            "0x10", "1_000", "١٢",
        ] {
            assert!(normalize_decimal(input).is_err(), "{input:?} accepted");
        }
    }

    #[test]
    fn huge_exponents_are_refused_without_allocating() {
        for input in [
            "1e999999999",
            "1e-999999999",
            "1e101",
            "1e00000000000000000000000000999",
        ] {
            let problem = normalize_decimal(input).expect_err(input);
            assert!(problem.contains("exponent out of range"), "{problem}");
        }
    }
}
