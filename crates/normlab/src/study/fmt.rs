//! Numbers and text for people: short numbers, percentages, escaping.

/// A number for people: up to 4 significant digits, no trailing zeros,
/// scientific notation outside [1e-3, 1e5).
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{x:.3e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        return format!("{}e{exp}", trim_zeros(mantissa));
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = trim_zeros(&format!("{x:.decimals$}")).to_string();
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// [`fmt_num`] with an explicit sign: "+1.2", "−0.5", "0".
pub fn signed(x: f64) -> String {
    if x > 0.0 {
        format!("+{}", fmt_num(x))
    } else {
        fmt_num(x)
    }
}

/// `x` as a percentage with one decimal ("68.3%"), or "n/a".
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

/// [`fmt_num`], or "n/a" for a non-finite value.
pub fn num(x: f64) -> String {
    if x.is_finite() {
        fmt_num(x)
    } else {
        "n/a".into()
    }
}

/// Escapes text for HTML and SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_num_is_short_and_exact_where_it_can_be() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (0.91234, "0.9123"),
            (12.346, "12.35"),
            (1234.6, "1235"),
            (-2.5, "-2.5"),
            (0.001, "0.001"),
            (1e-4, "1e-4"),
            (1.5e-7, "1.5e-7"),
            (123456.0, "1.235e5"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (-0.00001, "-1e-5"),
        ];
        for (x, want) in cases {
            assert_eq!(fmt_num(x), want, "fmt_num({x})");
        }
        assert_eq!(signed(1.5), "+1.5");
        assert_eq!(signed(-1.5), "-1.5");
        assert_eq!(pct(0.6834), "68.3%");
        assert_eq!(num(f64::NAN), "n/a");
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
