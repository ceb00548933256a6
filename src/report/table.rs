//! The report as aligned columns that fit a width: the name column shrinks first (shortened
//! in the middle), then the least important columns go.

use std::io::{self, Write};

use super::Report;
use super::cells::{Column, columns, lists, summary_lines};
use crate::text::{self, Align, Cut, Table, width_of};

/// Narrowest the name column gets before other columns go.
const MIN_NAME: usize = 24;
const GAP: usize = 2;

pub fn write_table(report: &Report, width: usize, out: &mut dyn Write) -> io::Result<()> {
    for (k, v) in summary_lines(report) {
        writeln!(out, "{:<9} {v}", format!("{k}:"))?;
    }
    if !report.tensors.is_empty() {
        writeln!(out)?;
        let mut cols = columns(report);
        let natural = |c: &Column| {
            c.cells
                .iter()
                .map(|s| width_of(s))
                .chain([width_of(c.head)])
                .max()
                .unwrap_or(0)
        };
        let total = |cols: &[Column], name_w: usize| -> usize {
            cols.iter()
                .map(|c| {
                    if c.head == "tensor" {
                        name_w
                    } else {
                        natural(c)
                    }
                })
                .sum::<usize>()
                + GAP * cols.len().saturating_sub(1)
        };
        let name_natural = cols.iter().find(|c| c.head == "tensor").map_or(0, natural);
        let mut name_w = name_natural;
        loop {
            if total(&cols, name_w) <= width {
                break;
            }
            // Shrink the name down to MIN_NAME first, then drop the least important column.
            let others = total(&cols, 0);
            if name_w > MIN_NAME {
                name_w = width.saturating_sub(others).clamp(MIN_NAME, name_w);
                if total(&cols, name_w) <= width {
                    break;
                }
            }
            let worst = cols
                .iter()
                .enumerate()
                .filter(|(_, c)| c.priority > 0)
                .max_by_key(|(i, c)| (c.priority, *i))
                .map(|(i, _)| i);
            match worst {
                Some(i) => {
                    cols.remove(i);
                    name_w = name_natural.min(width.saturating_sub(total(&cols, 0)).max(MIN_NAME));
                }
                None => break,
            }
        }
        let mut table = Table::new(
            cols.iter()
                .enumerate()
                .map(|(i, c)| {
                    let align = if c.right { Align::Right } else { Align::Left };
                    let col = text::Column::new(c.head, align).gap(if i > 0 { GAP } else { 0 });
                    if c.head == "tensor" {
                        col.max(name_w, Cut::Middle)
                    } else {
                        col
                    }
                })
                .collect(),
        );
        for r in 0..report.tensors.len() {
            table.row(cols.iter().map(|c| c.cells[r].clone()).collect());
        }
        for line in table.lines(true) {
            writeln!(out, "{line}")?;
        }
    }
    lists(report, out, |out, s| writeln!(out, "{s}"))
}
