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
