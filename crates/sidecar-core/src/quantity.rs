//! Resource quantities compared by amount, as the API server reads them.
//!
//! The API server stores quantities in canonical form (`0.1` becomes `100m`, `1024Mi` becomes
//! `1Gi`), so comparing what the operator sent with what it stored as text would see drift that
//! is not there, and re-apply forever.

/// Whether `a` and `b` are the same amount (`"0.1"` and `"100m"`, `"1Gi"` and `"1024Mi"`). A
/// string that is not a quantity equals only itself.
pub fn same_amount(a: &str, b: &str) -> bool {
    a == b || matches!((amount(a), amount(b)), (Some(x), Some(y)) if x == y)
}

/// `text` in thousandths of its unit (millicores for CPU, thousandths of a byte for memory),
/// rounded up as the API server's `MilliValue` does; `None` for text that is not a quantity or a
/// negative one. Amounts too large for a `u64` saturate.
pub fn milli(text: &str) -> Option<u64> {
    let (negative, mantissa, exponent) = amount(text)?;
    if negative && mantissa != 0 {
        return None;
    }
    let exponent = exponent.checked_add(3)?;
    let value = if exponent >= 0 {
        10u128
            .checked_pow(exponent.unsigned_abs())
            .and_then(|scale| mantissa.checked_mul(scale))
            .unwrap_or(u128::MAX)
    } else {
        match 10u128.checked_pow(exponent.unsigned_abs()) {
            Some(scale) => mantissa.div_ceil(scale),
            None => 1, // a positive amount far below one thousandth
        }
    };
    Some(u64::try_from(value).unwrap_or(u64::MAX))
}

/// An exact amount: `(negative, mantissa, exponent)` meaning ±mantissa × 10^exponent, with no
/// trailing zeros in the mantissa (so equal amounts have equal triples).
type Amount = (bool, u128, i32);

fn amount(text: &str) -> Option<Amount> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut mantissa: u128 = 0;
    for digit in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa.checked_mul(10)?.checked_add(u128::from(digit - b'0'))?;
    }
    let mut exponent = -i32::try_from(fraction.len()).ok()?;
    let (ten, two) = suffix_exponents(suffix)?;
    exponent = exponent.checked_add(ten)?;
    mantissa = mantissa.checked_mul(1u128.checked_shl(two)?)?;
    if mantissa == 0 {
        return Some((false, 0, 0));
    }
    while mantissa.is_multiple_of(10) {
        mantissa /= 10;
        exponent = exponent.checked_add(1)?;
    }
    Some((negative, mantissa, exponent))
}

/// The powers of ten and of two a suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i32, u32)> {
    let decimal = |e: i32| Some((e, 0));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        exponent => {
            let digits = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?;
            Some((digits.parse().ok()?, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{milli, same_amount};

    #[test]
    fn milli_values_round_up() {
        for (text, expected) in [
            ("100m", Some(100)),
            ("0.1", Some(100)),
            ("1", Some(1000)),
            ("1.5", Some(1500)),
            ("1Mi", Some(1_048_576_000)),
            ("1n", Some(1)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("-1", None),
            ("abc", None),
            ("99999999999999999999999999999999999999999Ei", None),
            ("9P", Some(9_000_000_000_000_000_000)),
            ("20E", Some(u64::MAX)),
        ] {
            assert_eq!(milli(text), expected, "{text}");
        }
    }

    #[test]
    fn equal_amounts_in_any_form() {
        for (a, b) in [
            ("0.1", "100m"),
            ("1", "1000m"),
            ("1Gi", "1024Mi"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1k"),
            ("1E3", "1000"),
            ("0", "0m"),
            ("+2", "2"),
            ("500m", ".5"),
            ("128974848", "123Mi"),
        ] {
            assert!(same_amount(a, b), "{a} = {b}");
            assert!(same_amount(b, a), "{b} = {a}");
        }
    }

    #[test]
    fn different_amounts_and_non_quantities() {
        for (a, b) in [
            ("100m", "10m"),
            ("1Gi", "1G"),
            ("-1", "1"),
            ("1k", "1Ki"),
            ("abc", "abd"),
            ("1x", "1"),
            ("", "0"),
            (".", "0"),
            ("99999999999999999999999999999999999999999Ei", "1"),
        ] {
            assert!(!same_amount(a, b), "{a} != {b}");
        }
        assert!(same_amount("abc", "abc"), "text equals itself");
    }
}
