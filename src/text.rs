//! Text helpers shared by every human-readable output (quantize and batch summaries,
//! `inspect`, the report formats): sizes, ratios, display widths.

/// `1 tensor`, `2 tensors`: a count with the singular or plural noun.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The per-channel fallbacks of a run, one line per reason: how many tensors, why, and the
/// first one's name. `fallbacks` gives (reason, tensor name) per tensor.
pub fn fallback_lines<'a>(fallbacks: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut by_reason: std::collections::BTreeMap<&str, (usize, &str)> = Default::default();
    for (reason, name) in fallbacks {
        by_reason.entry(reason).or_insert((0, name)).0 += 1;
    }
    by_reason
        .into_iter()
        .map(|(reason, (n, first))| {
            format!(
                "{} per-tensor instead of per-channel: {reason} (e.g. {first})",
                count(n, "tensor", "tensors")
            )
        })
        .collect()
}

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

/// How a cell sits in its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Padded on the right (the last column is not padded).
    Left,
    /// Padded on the left.
    Right,
}

/// How a cell wider than its column's limit is shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Not at all: the cell overflows and the rest of the line moves right.
    Keep,
    /// Its end is replaced by `…`.
    End,
    /// Its middle is replaced by `…` ([`shorten`]): names differ at both ends.
    Middle,
}

/// One column of a [`Table`].
#[derive(Debug, Clone)]
pub struct Column {
    /// Header text (empty for tables printed without a header).
    pub head: String,
    /// Alignment of its cells.
    pub align: Align,
    /// Spaces before the column (before the first one: the indent of the table).
    pub gap: usize,
    /// Narrowest width.
    pub min: usize,
    /// Widest width, beyond which cells are shortened as `cut` says.
    pub max: usize,
    /// How a cell wider than `max` is shortened.
    pub cut: Cut,
}

impl Column {
    /// A column as wide as its widest cell or header, two spaces after the previous one.
    pub fn new(head: impl Into<String>, align: Align) -> Column {
        Column {
            head: head.into(),
            align,
            gap: 2,
            min: 0,
            max: usize::MAX,
            cut: Cut::Keep,
        }
    }

    /// With `gap` spaces before it.
    pub fn gap(self, gap: usize) -> Column {
        Column { gap, ..self }
    }

    /// At least `min` wide.
    pub fn min(self, min: usize) -> Column {
        Column { min, ..self }
    }

    /// At most `max` wide, longer cells shortened by `cut`.
    pub fn max(self, max: usize, cut: Cut) -> Column {
        Column { max, cut, ..self }
    }
}

/// Aligned text columns: the one table layout of `inspect`, the report table and the batch
/// summary. Each column is as wide as its widest cell (header included), within its limits;
/// columns are separated by their gaps.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
    trim: bool,
}

impl Table {
    /// A table of `columns` with no rows yet.
    pub fn new(columns: Vec<Column>) -> Table {
        Table {
            columns,
            rows: Vec::new(),
            trim: false,
        }
    }

    /// Lines lose their trailing spaces (an empty last cell leaves none).
    pub fn trim_end(self) -> Table {
        Table { trim: true, ..self }
    }

    /// Adds a row (missing cells are empty, extra ones are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The width of column `i`: its widest cell or header, within its limits.
    pub fn width(&self, i: usize) -> usize {
        let c = &self.columns[i];
        let natural = self
            .rows
            .iter()
            .filter_map(|r| r.get(i))
            .map(|s| width_of(s))
            .chain([width_of(&c.head)])
            .max()
            .unwrap_or(0);
        natural.min(c.max).max(c.min)
    }

    /// One line of `cells` laid out in the columns.
    fn line(&self, widths: &[usize], cells: &[&str]) -> String {
        let mut s = String::new();
        let last = self.columns.len().saturating_sub(1);
        for (i, (c, &w)) in self.columns.iter().zip(widths).enumerate() {
            let cell = cells.get(i).copied().unwrap_or("");
            let cell = if width_of(cell) > c.max {
                match c.cut {
                    Cut::Keep => cell.to_owned(),
                    Cut::Middle => shorten(cell, c.max),
                    Cut::End => {
                        let t: String = cell.chars().take(c.max.saturating_sub(1)).collect();
                        format!("{t}…")
                    }
                }
            } else {
                cell.to_owned()
            };
            s.push_str(&" ".repeat(c.gap));
            let pad = w.saturating_sub(width_of(&cell));
            match c.align {
                Align::Right => {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(&cell);
                }
                Align::Left => {
                    s.push_str(&cell);
                    if i < last {
                        s.push_str(&" ".repeat(pad));
                    }
                }
            }
        }
        if self.trim {
            s.truncate(s.trim_end().len());
        }
        s
    }

    /// The rows as lines, without a newline each; the header first if `header`.
    pub fn lines(&self, header: bool) -> Vec<String> {
        let widths: Vec<usize> = (0..self.columns.len()).map(|i| self.width(i)).collect();
        let mut out = Vec::with_capacity(self.rows.len() + 1);
        if header {
            let heads: Vec<&str> = self.columns.iter().map(|c| c.head.as_str()).collect();
            out.push(self.line(&widths, &heads));
        }
        for r in &self.rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            out.push(self.line(&widths, &cells));
        }
        out
    }
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

    #[test]
    fn a_table_aligns_pads_and_shortens_its_columns() {
        let mut t = Table::new(vec![
            Column::new("id", Align::Right).gap(1),
            Column::new("name", Align::Left).max(6, Cut::End),
            Column::new("mid", Align::Left).max(7, Cut::Middle),
            Column::new("last", Align::Left),
        ]);
        t.row(vec!["1".into(), "abc".into(), "x".into(), "".into()]);
        t.row(vec![
            "22".into(),
            "abcdefghij".into(),
            "abcdefghij".into(),
            "z".into(),
        ]);
        assert_eq!(t.width(1), 6);
        assert_eq!(
            t.lines(true),
            [
                " id  name    mid      last",
                "  1  abc     x        ",
                " 22  abcde…  ab…ghij  z",
            ]
        );
        let t = t.trim_end();
        assert_eq!(t.lines(false)[0], "  1  abc     x");
        let mut k = Table::new(vec![
            Column::new("", Align::Left).gap(0).min(5),
            Column::new("", Align::Left).gap(1).max(3, Cut::Keep),
            Column::new("", Align::Left).gap(0),
        ]);
        k.row(vec!["ok".into(), "abcdef".into(), "!".into()]);
        k.row(vec!["ok".into(), "ab".into(), "!".into()]);
        assert_eq!(k.lines(false), ["ok    abcdef!", "ok    ab !"]);
    }
}
