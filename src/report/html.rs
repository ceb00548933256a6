//! The HTML report: one self-contained page (inline CSS, inline script, inline SVG).
//!
//! It holds the summary, the table of tensors (sortable by clicking a header; works without
//! the script too, worst first), one figure per plotted tensor (the worst ones, which have
//! histograms): the float weights against the int8 grid and the reconstruction errors, drawn
//! as SVG by `plotters`, and the skipped and unmatched lists. Nothing is fetched from the
//! network.

use std::io::{self, Write};

use plotters::prelude::*;

use super::analyze::Histograms;
use super::cells::{ops_text, scale_text, scheme_text, sqnr_text, summary_lines, zero_point_text};
use super::{Report, TensorRow};
use crate::text::human;

/// Escapes text for HTML element content and attribute values.
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

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 12px}h2{font-size:17px;margin:28px 0 8px}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:4px 16px;margin:0}
dl.summary dt{font-weight:600;color:#4a5568}dl.summary dd{margin:0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
th,td{padding:4px 4px;border-bottom:1px solid #e2e8f0;white-space:nowrap}
th{position:sticky;top:0;background:#f7fafc;cursor:pointer;user-select:none;text-align:left;white-space:normal;vertical-align:bottom}
th.num,td.num{text-align:right}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
tr:hover td{background:#f0f5ff}
td.name,td.ops{max-width:200px;overflow:hidden;text-overflow:ellipsis}
td.ops{max-width:150px}
td.bad{color:#b42318;font-weight:600}
.plots{display:flex;flex-direction:column;gap:18px}
figure.plot{margin:0;border:1px solid #e2e8f0;border-radius:6px;padding:8px;width:max-content}
figure.plot figcaption{font-size:13px;margin-bottom:4px}
figure.plot figcaption code{font-size:12px}
ul.list{font-size:13px}
";

const SCRIPT: &str = "
document.querySelectorAll('table.sortable').forEach(function(table){
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener('click',function(){
      var asc=th.getAttribute('aria-sort')!=='ascending';
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
      var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      var num=th.classList.contains('num');
      rows.sort(function(a,b){
        var x=a.cells[col].getAttribute('data-v'),y=b.cells[col].getAttribute('data-v');
        var c=num?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);
        if(isNaN(c))c=0;
        return asc?c:-c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
";

/// Lower SQNR than this is marked in red in the table.
const LOW_SQNR_DB: f64 = 30.0;

/// A table cell: shown text, sort key, numeric or not.
struct Cell {
    text: String,
    key: String,
    num: bool,
}

fn num(text: String, key: f64) -> Cell {
    Cell {
        text,
        key: if key.is_nan() {
            "0".into()
        } else if key.is_infinite() {
            if key > 0.0 { "1e308" } else { "-1e308" }.into()
        } else {
            key.to_string()
        },
        num: true,
    }
}

fn text(text: String) -> Cell {
    Cell {
        key: text.clone(),
        text,
        num: false,
    }
}

fn cells(r: &TensorRow, against: bool) -> Vec<(&'static str, Cell)> {
    let mut v = vec![
        ("SQNR dB", num(sqnr_text(r), r.sqnr)),
        ("sg", num(r.subgraph.to_string(), r.subgraph as f64)),
        ("idx", num(r.tensor.to_string(), r.tensor as f64)),
        ("tensor", text(r.name.clone())),
        ("ops", text(ops_text(r))),
        ("elements", num(r.elements.to_string(), r.elements as f64)),
        ("min", num(format!("{:.4}", r.min), f64::from(r.min))),
        ("max", num(format!("{:.4}", r.max), f64::from(r.max))),
        ("scheme", text(scheme_text(r))),
        ("scale", num(scale_text(r), f64::from(r.scheme.scale_max))),
        (
            "zero point",
            num(zero_point_text(r), f64::from(r.scheme.zero_point_min)),
        ),
        (
            "max abs err",
            num(format!("{:.3e}", r.max_abs_error), r.max_abs_error),
        ),
        ("RMSE", num(format!("{:.3e}", r.rmse), r.rmse)),
        ("cosine", num(format!("{:.6}", r.cosine), r.cosine)),
        (
            "levels",
            num(r.levels_used.to_string(), f64::from(r.levels_used)),
        ),
        (
            "at edges",
            num(format!("{:.2}%", 100.0 * r.clamp_share), r.clamp_share),
        ),
        (
            "bytes before",
            num(human(r.bytes_before), r.bytes_before as f64),
        ),
        (
            "bytes after",
            num(human(r.bytes_after), r.bytes_after as f64),
        ),
    ];
    if against {
        v.push((
            "matched by",
            text(
                r.quantized
                    .as_ref()
                    .map_or("-".into(), |q| q.matched_by.key().to_owned()),
            ),
        ));
    }
    v
}

fn plot_error(e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("cannot draw plot: {e:?}"))
}

/// Width and height of one figure's SVG.
const PLOT_SIZE: (u32, u32) = (1000, 320);

/// Font of the tick labels, the axis names and the legends (plotters writes 1/1.24 of it
/// into the SVG: 16 gives 12.9-pixel text).
const LABEL_PX: u32 = 16;
/// Colours: the weights' bars, the int8 grid's ticks, the error's bars.
const VALUE_BARS: RGBColor = RGBColor(66, 110, 196);
const GRID_TICKS: RGBColor = RGBColor(214, 69, 65);
const ERROR_BARS: RGBColor = RGBColor(46, 150, 110);

/// Draws the two histograms of one tensor side by side into one SVG.
pub fn plot(h: &Histograms) -> io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(PLOT_SIZE.0 / 2);

        let (mut lo, mut hi) = (f64::from(h.value_range.0), f64::from(h.value_range.1));
        if hi.is_nan() || hi <= lo {
            lo -= 0.5;
            hi += 0.5;
        }
        let top = h.values.iter().copied().max().unwrap_or(0).max(1);
        let grid_title = match h.grid_channel {
            Some(c) => format!("float weights, int8 grid of channel {c} (widest)"),
            None => "float weights and the int8 grid".to_owned(),
        };
        let labels = ("sans-serif", LABEL_PX);
        // Room above the bars for the legend.
        let mut chart = ChartBuilder::on(&left)
            .caption(grid_title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(lo..hi, 0u64..top + top / 3 + 1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(6)
            .y_labels(5)
            .label_style(labels)
            .axis_desc_style(labels)
            .x_label_formatter(&|v| {
                if v.abs() < (hi - lo) * 1e-6 {
                    "0".to_owned()
                } else {
                    format!("{v:.3}")
                }
            })
            .x_desc("value (float weight)")
            .y_desc("count")
            .draw()
            .map_err(plot_error)?;
        let w = (hi - lo) / h.values.len() as f64;
        chart
            .draw_series(h.values.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + w * i as f64;
                Rectangle::new([(x0, 0), (x0 + w, c)], VALUE_BARS.filled())
            }))
            .map_err(plot_error)?
            .label("float weights per bin")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], VALUE_BARS.filled()));
        // The grid, over the bars: a tick at the bottom for every value an int8 code stands for.
        let tick = (top / 12).max(1);
        chart
            .draw_series(h.grid.iter().map(|&g| {
                PathElement::new(
                    vec![(f64::from(g), 0), (f64::from(g), tick)],
                    GRID_TICKS.mix(0.5).stroke_width(1),
                )
            }))
            .map_err(plot_error)?
            .label("int8 grid: one tick per code's value")
            .legend(|(x, y)| PathElement::new(vec![(x + 6, y - 6), (x + 6, y + 6)], GRID_TICKS));
        chart
            .configure_series_labels()
            .label_font(labels)
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(plot_error)?;
        // The error in units of the quantization step (a step is twice `half_step`): the
        // rounding error of a code lies in [-0.5, 0.5].
        let half = if h.half_step > 0.0 { h.half_step } else { 1.0 };
        let etop = h.errors.iter().copied().max().unwrap_or(0).max(1);
        let title = if h.errors_outside > 0 {
            format!("error x - x' ({} beyond half a step)", h.errors_outside)
        } else {
            "error x - x' (within half a step)".to_owned()
        };
        let mut chart = ChartBuilder::on(&right)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5f64..0.5, 0u64..etop + etop / 10 + 1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(5)
            .y_labels(5)
            .label_style(labels)
            .axis_desc_style(labels)
            .x_label_formatter(&|v: &f64| {
                // The middle label would read -0.00 from float rounding.
                if v.abs() < 1e-9 {
                    "0".to_owned()
                } else {
                    format!("{v:.2}")
                }
            })
            .x_desc(format!(
                "error x - x' in quantization steps (1 step = {:.3e})",
                2.0 * half
            ))
            .y_desc("count")
            .draw()
            .map_err(plot_error)?;
        let w = 1.0 / h.errors.len() as f64;
        chart
            .draw_series(h.errors.iter().enumerate().map(|(i, &c)| {
                let x0 = -0.5 + w * i as f64;
                Rectangle::new([(x0, 0), (x0 + w, c)], ERROR_BARS.filled())
            }))
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Writes the page. The first `plots` rows that have histograms get a figure each.
pub fn write_html(report: &Report, plots: usize, out: &mut dyn Write) -> io::Result<()> {
    let title = report
        .model
        .as_deref()
        .map_or("tflq report".to_owned(), |m| format!("tflq report: {m}"));
    writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">"
    )?;
    writeln!(
        out,
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
    )?;
    writeln!(
        out,
        "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        escape(&title)
    )?;
    writeln!(out, "<h1>Quantization error report</h1>")?;
    writeln!(out, "<section id=\"summary\">\n<dl class=\"summary\">")?;
    for (k, v) in summary_lines(report) {
        writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v))?;
    }
    writeln!(out, "</dl>\n</section>")?;

    let against = report.against.is_some();
    writeln!(
        out,
        "<section id=\"tensors\">\n<h2>Tensors ({}), worst first</h2>",
        report.tensors.len()
    )?;
    writeln!(
        out,
        "<div class=\"scroll\"><table class=\"sortable\" id=\"tensor-table\">\n<thead><tr>"
    )?;
    if let Some(first) = report.tensors.first() {
        for (head, c) in cells(first, against) {
            let class = if c.num { " class=\"num\"" } else { "" };
            // Short heads, so that the table fits a laptop screen; the tooltip says them whole.
            let title = match head {
                "sg" => " title=\"subgraph\"",
                "idx" => " title=\"tensor index in its subgraph\"",
                _ => "",
            };
            writeln!(out, "<th{class}{title}>{}</th>", escape(head))?;
        }
    }
    writeln!(out, "</tr></thead>\n<tbody>")?;
    for r in &report.tensors {
        write!(out, "<tr>")?;
        for (head, c) in cells(r, against) {
            let mut class = Vec::new();
            if c.num {
                class.push("num");
            }
            if head == "tensor" {
                class.push("name");
            }
            if head == "ops" {
                class.push("ops");
            }
            if head == "SQNR dB" && r.sqnr < LOW_SQNR_DB {
                class.push("bad");
            }
            // Cut names and operator lists are whole in their tooltip.
            let title = if head == "tensor" || head == "ops" {
                format!(" title=\"{}\"", escape(&c.text))
            } else {
                String::new()
            };
            write!(
                out,
                "<td class=\"{}\" data-v=\"{}\"{title}>{}</td>",
                class.join(" "),
                escape(&c.key),
                escape(&c.text)
            )?;
        }
        writeln!(out, "</tr>")?;
    }
    writeln!(out, "</tbody>\n</table></div>")?;
    if report.tensors.is_empty() {
        let why = if report.against.is_some() {
            "no quantized tensor of the other model matches a float tensor of this one"
        } else {
            "no tensor of this model would be quantized with these options (see the skipped tensors)"
        };
        writeln!(
            out,
            "<p class=\"empty\" id=\"no-tensors\">No tensor was measured: {}.</p>",
            escape(why)
        )?;
    }
    writeln!(out, "</section>")?;

    let plotted: Vec<&TensorRow> = report
        .tensors
        .iter()
        .filter(|r| r.histograms.is_some())
        .take(plots)
        .collect();
    if plotted.is_empty() && !report.tensors.is_empty() {
        let why = if plots == 0 {
            "--plots 0 was given".to_owned()
        } else if report
            .tensors
            .iter()
            .all(|r| r.scheme.granularity == "float16")
        {
            "float16 weights have no int8 codes to plot (the table gives their error)".to_owned()
        } else {
            "no measured tensor has value histograms".to_owned()
        };
        writeln!(
            out,
            "<section id=\"plots\">\n<p class=\"empty\" id=\"no-plots\">No plots: {}.</p>\n</section>",
            escape(&why)
        )?;
    }
    if !plotted.is_empty() {
        writeln!(
            out,
            "<section id=\"plots\">\n<h2>{}</h2>\n<div class=\"plots\">",
            match plotted.len() {
                1 => "The worst tensor".to_owned(),
                n => format!("The {n} worst tensors"),
            }
        )?;
        for (i, r) in plotted.iter().enumerate() {
            let Some(h) = &r.histograms else { continue };
            writeln!(
                out,
                "<figure class=\"plot\" id=\"plot-{i}\" data-subgraph=\"{}\" data-tensor=\"{}\">",
                r.subgraph, r.tensor
            )?;
            writeln!(
                out,
                "<figcaption><b>{}</b> SQNR {} dB &middot; subgraph {} tensor {} \
                 <code>{}</code> &middot; {} &middot; scale {} &middot; zero point {}</figcaption>",
                i + 1,
                escape(&sqnr_text(r)),
                r.subgraph,
                r.tensor,
                escape(&r.name),
                crate::text::count(r.elements as usize, "element", "elements"),
                escape(&scale_text(r)),
                escape(&zero_point_text(r)),
            )?;
            writeln!(out, "{}", plot(h)?)?;
            writeln!(out, "</figure>")?;
        }
        writeln!(out, "</div>\n</section>")?;
    }

    for (id, title, items) in [
        (
            "skipped",
            "Skipped",
            report
                .skipped
                .iter()
                .map(|s| {
                    format!(
                        "{}:{} <code>{}</code>: {}",
                        s.subgraph,
                        s.tensor,
                        escape(&s.name),
                        escape(&s.detail)
                    )
                })
                .collect::<Vec<_>>(),
        ),
        (
            "unmatched",
            "Unmatched",
            report
                .unmatched
                .iter()
                .map(|u| {
                    format!(
                        "{}:{} <code>{}</code> ({}): {}",
                        u.subgraph,
                        u.tensor,
                        escape(&u.name),
                        escape(&u.dtype),
                        escape(&u.reason)
                    )
                })
                .collect(),
        ),
    ] {
        if items.is_empty() {
            continue;
        }
        writeln!(
            out,
            "<section id=\"{id}\">\n<h2>{title} ({})</h2>\n<ul class=\"list\">",
            items.len()
        )?;
        for i in items {
            writeln!(out, "<li>{i}</li>")?;
        }
        writeln!(out, "</ul>\n</section>")?;
    }
    writeln!(out, "<script>{SCRIPT}</script>\n</body>\n</html>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn a_plot_is_one_svg_with_bars_and_grid() {
        let h = Histograms {
            value_range: (-1.0, 1.0),
            values: vec![1, 5, 9, 5, 1],
            grid: vec![-1.0, 0.0, 1.0],
            grid_channel: None,
            half_step: 0.004,
            errors: vec![3, 4, 3],
            errors_outside: 0,
        };
        let svg = plot(&h).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert_eq!(svg.matches("<svg").count(), 1);
        // 5 + 3 bars (zero-height ones included) and 3 grid ticks.
        assert!(svg.matches("<rect").count() >= 8);
        assert!(svg.matches("<polyline").count() >= 3);
    }
}
