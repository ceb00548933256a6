//! Text helpers shared by every human-readable output (quantize and batch summaries,
//! `inspect`, the report formats): sizes, ratios, display widths.

/// `1.5 KiB` style sizes (binary units, one decimal; bytes as a whole number).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `after` as a share of `before`, e.g. `26.0%`; `-` when `before` is 0.
pub fn ratio(after: u64, before: u64) -> String {
    if before == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * after as f64 / before as f64)
    }
}

/// Width of `s` on a terminal, counted in characters.
pub fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// Shortens `s` to `max` characters, keeping both ends (names differ at their ends).
pub fn shorten(s: &str, max: usize) -> String {
    let n = width_of(s);
    if n <= max || max < 5 {
        return s.to_owned();
    }
    let keep = max - 1;
    let head = keep / 3;
    let tail = keep - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ratios_read_as_people_write_them() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
        assert_eq!(ratio(1, 4), "25.0%");
        assert_eq!(ratio(1, 0), "-");
    }

    #[test]
    fn names_are_shortened_in_the_middle() {
        assert_eq!(shorten("short", 10), "short");
        let s = shorten("model/layer_12/attention/query/kernel", 20);
        assert_eq!(s.chars().count(), 20);
        assert!(
            s.starts_with("model/") && s.ends_with("query/kernel"),
            "{s}"
        );
    }
}
