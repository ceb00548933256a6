//! The report as aligned columns that fit a width: the name column shrinks first (shortened
//! in the middle), then the least important columns go.

use std::io::{self, Write};

use super::Report;
use super::cells::{Column, columns, lists, summary_lines};
use crate::text::{shorten, width_of};

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
        let widths: Vec<usize> = cols
            .iter()
            .map(|c| {
                if c.head == "tensor" {
                    name_w
                } else {
                    natural(c)
                }
            })
            .collect();
        let line = |cells: Vec<String>| {
            let mut s = String::new();
            for (i, (cell, (c, &w))) in cells.iter().zip(cols.iter().zip(&widths)).enumerate() {
                if i > 0 {
                    s.push_str(&" ".repeat(GAP));
                }
                let pad = w.saturating_sub(width_of(cell));
                let last = i + 1 == cols.len();
                if c.right {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(cell);
                } else {
                    s.push_str(cell);
                    if !last {
                        s.push_str(&" ".repeat(pad));
                    }
                }
            }
            s
        };
        writeln!(
            out,
            "{}",
            line(cols.iter().map(|c| c.head.to_owned()).collect())
        )?;
        for r in 0..report.tensors.len() {
            let cells = cols
                .iter()
                .zip(&widths)
                .map(|(c, &w)| {
                    if c.head == "tensor" {
                        shorten(&c.cells[r], w)
                    } else {
                        c.cells[r].clone()
                    }
                })
                .collect();
            writeln!(out, "{}", line(cells))?;
        }
    }
    lists(report, out, |out, s| writeln!(out, "{s}"))
}
