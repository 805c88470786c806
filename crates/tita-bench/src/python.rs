//! Python's printing rules, which the official scoring scripts' output is made of: the
//! benchmarks' `score` must print what those scripts print, character for character.
//! (`'%.3f' % x` needs nothing here: Rust's `{:.3}` rounds the exact binary value half to
//! even, as Python's does.)

/// `str(x)` / `repr(x)` of a Python float: the shortest digits that read back as `x`, in
/// fixed notation for exponents -4 ..= 15 (with at least one decimal, `1.0`) and scientific
/// notation with a signed two-digit exponent otherwise (`1e-05`, `1.5e+16`).
pub fn float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits: `d[.ddd]e[-]N`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` writes an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if (point as usize) >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

// ---- JSON as Python's `json` module writes it (ScienceQA, SEED-Bench, MMBench) ----

/// A value as Python's `json` module sees it; dicts keep their insertion order, as Python's do.
#[derive(Debug, Clone, PartialEq)]
pub enum PyJson {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<PyJson>),
    Dict(Vec<(String, PyJson)>),
}

/// `json.dumps(value)` (`indent` None: separators `", "` and `": "`) or
/// `json.dumps(value, indent=n)` / `json.dump(..., indent=n)`, with the default
/// `ensure_ascii=True`.
pub fn json_dumps(value: &PyJson, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_json(&mut out, value, indent, 0);
    out
}

/// A string as `json.dumps` quotes it: every character outside ASCII 0x20..=0x7e escaped,
/// `\uXXXX` in lower-case hex (surrogate pairs beyond the BMP).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn write_json(out: &mut String, value: &PyJson, indent: Option<usize>, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        PyJson::Null => out.push_str("null"),
        PyJson::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        PyJson::Int(i) => out.push_str(&i.to_string()),
        PyJson::Float(x) if x.is_nan() => out.push_str("NaN"),
        PyJson::Float(x) if x.is_infinite() => {
            out.push_str(if *x > 0.0 { "Infinity" } else { "-Infinity" })
        }
        PyJson::Float(x) => out.push_str(&float(*x)),
        PyJson::Str(s) => out.push_str(&json_str(s)),
        PyJson::List(items) if items.is_empty() => out.push_str("[]"),
        PyJson::Dict(items) if items.is_empty() => out.push_str("{}"),
        PyJson::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        PyJson::Dict(items) => {
            out.push('{');
            for (i, (key, item)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&json_str(key));
                out.push_str(": ");
                write_json(out, item, indent, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

#[cfg(test)]
mod json_tests {
    use super::{json_dumps, json_str, PyJson};

    #[test]
    fn json_is_written_as_python_writes_it() {
        assert_eq!(
            json_str("a\"b\\\n\t\u{7f}é😀Ｂ"),
            r#""a\"b\\\n\t\u007f\u00e9\ud83d\ude00\uff22""#
        );
        let v = PyJson::Dict(vec![
            (
                "b".into(),
                PyJson::List(vec![PyJson::Int(1), PyJson::Float(40.0)]),
            ),
            ("a".into(), PyJson::Dict(vec![])),
            ("c".into(), PyJson::List(vec![])),
            ("d".into(), PyJson::Bool(false)),
            ("e".into(), PyJson::Null),
        ]);
        assert_eq!(
            json_dumps(&v, None),
            r#"{"b": [1, 40.0], "a": {}, "c": [], "d": false, "e": null}"#
        );
        assert_eq!(
            json_dumps(&v, Some(2)),
            "{\n  \"b\": [\n    1,\n    40.0\n  ],\n  \"a\": {},\n  \"c\": [],\n  \"d\": false,\n  \"e\": null\n}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::float;

    #[test]
    fn floats_print_as_python_prints_them() {
        let cases = [
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (375.0, "375.0"),
            (0.888888888888889, "0.888888888888889"),
            (99.99999999999999, "99.99999999999999"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456.789, "123456.789"),
            (1e100, "1e+100"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (x, want) in cases {
            assert_eq!(float(x), want, "{x:e}");
        }
    }
}

// ---- Python's string and number rules for the VQA-style scorers (json.dumps, str.split,
// round, statistics.mean, the `re` module's `\d`).

/// `str.isspace()`: Unicode White_Space plus the four information separators U+001C..U+001F,
/// which Python counts as whitespace (bidirectional class B/S) and Rust does not.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.strip()` without arguments.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.split()` without arguments: runs of whitespace separate, no empty words.
pub fn split(s: &str) -> Vec<&str> {
    s.split(is_space).filter(|w| !w.is_empty()).collect()
}

/// The first code point of every run of ten Unicode decimal digits (category Nd) in Python
/// 3.11's tables (Unicode 14.0): what `\d` matches in a `str` pattern of the `re` module.
const DECIMAL_RUNS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// `re`'s `\d` on a `str`: a Unicode decimal digit (`٣` and `３` too, not `²` or `½`).
pub fn is_decimal(c: char) -> bool {
    let c = c as u32;
    let i = DECIMAL_RUNS.partition_point(|&start| start <= c);
    i > 0 && c - DECIMAL_RUNS[i - 1] < 10
}

/// `json.dumps(s)`: a quoted string with `ensure_ascii` escapes (`\uXXXX` in lower-case hex
/// for everything outside space..`~`, surrogate pairs above U+FFFF).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// `json.dumps(value)` with the default separators (`", "`, `": "`) and `ensure_ascii`, keys
/// in the map's order (Python writes a dict's insertion order: build the value with keys in
/// that order, or use [`json_object`]). Floats print as `repr`.
pub fn json_dumps(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => if *b { "true" } else { "false" }.into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.is_finite() => float(f),
            (_, _, Some(f)) if f.is_nan() => "NaN".into(),
            (_, _, Some(f)) => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
            _ => n.to_string(),
        },
        Value::String(s) => json_str(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(json_dumps).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => json_object(map.iter().map(|(k, v)| (k.as_str(), v))),
    }
}

/// `json.dumps` of a dict whose keys come in the given order.
pub fn json_object<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
) -> String {
    let parts: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_dumps(v)))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// `round(x, digits)` of a float: the exact binary value rounded to `digits` decimals, half to
/// even (as `'%.*f'` does), read back.
pub fn round(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}")
        .parse()
        .expect("a formatted float reads back")
}

/// `statistics.mean(values)`: the exact sum of the floats divided by their count, rounded
/// once (Python sums them as fractions), where `sum(values) / len(values)` rounds at every
/// step. Exact while the values' binary exponents span under ~60 binades (scores in
/// [0, 1] such as VQA's thirds); beyond that it falls back to the plain quotient. `None` for
/// no values (`StatisticsError`).
pub fn statistics_mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let plain = || values.iter().sum::<f64>() / values.len() as f64;
    if values.iter().any(|v| !v.is_finite()) {
        return Some(plain());
    }
    // x = sign · m · 2^e with an integer mantissa m.
    let parts: Vec<(i128, i32)> = values
        .iter()
        .filter(|v| **v != 0.0)
        .map(|v| {
            let bits = v.to_bits();
            let exp = ((bits >> 52) & 0x7ff) as i32;
            let frac = (bits & ((1u64 << 52) - 1)) as i128;
            let (m, e) = if exp == 0 {
                (frac, -1074)
            } else {
                (frac | (1i128 << 52), exp - 1075)
            };
            (if *v < 0.0 { -m } else { m }, e)
        })
        .collect();
    let Some(emin) = parts.iter().map(|p| p.1).min() else {
        return Some(0.0);
    };
    let emax = parts.iter().map(|p| p.1).max().expect("not empty");
    if emax - emin > 60 || values.len() > 1 << 20 {
        return Some(plain());
    }
    let sum: i128 = parts.iter().map(|(m, e)| m << (e - emin)).sum();
    if sum == 0 {
        return Some(0.0);
    }
    let negative = sum < 0;
    let magnitude = sum.unsigned_abs();
    let n = values.len() as u128;
    // Scale the numerator up so the quotient keeps at least 64 significant bits, then round
    // that quotient (with the remainder as a sticky bit) to 53 bits, half to even.
    let shift = (magnitude.leading_zeros() as i32 - 1).max(0);
    let scaled = magnitude << shift;
    let (mut q, sticky) = (scaled / n, !scaled.is_multiple_of(n));
    let bits = 128 - q.leading_zeros() as i32;
    let drop = bits - 53;
    let mut exp = emin - shift;
    if drop > 0 {
        let rest = q & ((1u128 << drop) - 1);
        let half = 1u128 << (drop - 1);
        q >>= drop;
        exp += drop;
        if rest > half || (rest == half && (sticky || q & 1 == 1)) {
            q += 1;
            if q == 1u128 << 53 {
                q >>= 1;
                exp += 1;
            }
        }
    }
    let value = (q as f64) * 2f64.powi(exp);
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod vqa_rule_tests {
    use super::*;

    #[test]
    fn python_string_and_number_rules() {
        assert_eq!(split(" a\u{1f}b\t c "), ["a", "b", "c"]);
        assert_eq!(strip("\u{1c} x \n"), "x");
        assert!(is_decimal('7') && is_decimal('٣') && is_decimal('３') && is_decimal('𝟎'));
        assert!(!is_decimal('²') && !is_decimal('½') && !is_decimal('a') && !is_decimal('/'));
        assert_eq!(
            json_str("caf\u{e9} \"q\"\\\t\u{7f}𝄞"),
            "\"caf\\u00e9 \\\"q\\\"\\\\\\t\\u007f\\ud834\\udd1e\""
        );
        let v = serde_json::json!([{"a": 1, "b": [true, null, 0.5]}]);
        assert_eq!(json_dumps(&v), "[{\"a\": 1, \"b\": [true, null, 0.5]}]");
        assert_eq!(round(62.265, 2), 62.27); // 62.265 is stored above the tie
        assert_eq!(round(0.125, 2), 0.12);
        assert_eq!(round(2.675, 2), 2.67);
        let thirds = [
            1.0 / 3.0,
            1.0 / 3.0,
            2.0 / 3.0,
            1.0,
            0.0,
            1.0 / 3.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ];
        assert_eq!(statistics_mean(&thirds), Some(0.6666666666666666));
        // Where the plain quotient (0.20000000000000004) is off in the last bit.
        assert_eq!(statistics_mean(&[0.1, 0.2, 0.3]), Some(0.2));
        assert_eq!(statistics_mean(&[1.0, 1.0]), Some(1.0));
        assert_eq!(statistics_mean(&[]), None);
        assert_eq!(statistics_mean(&[0.0, 0.0]), Some(0.0));
    }
}
