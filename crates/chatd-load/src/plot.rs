//! `--plot FILE.svg`: throughput and p50/p99 latency over time (per second, or per tenth of a
//! second for a connect phase), and the latency distribution.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::{fmt_count, fmt_us, Plot, Report};
use crate::stats::IntervalStats;

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws `report`'s plot into an SVG file at `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let title = format!("chatd load {} against {}", report.scenario, report.target);
    draw_plot(&report.plot, &title, path).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))
}

fn draw_plot(plot: &Plot, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 1020)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));

    // 1. Throughput over time.
    let end = |rows: &[IntervalStats]| rows.last().map_or(1.0, |r| r.t + r.secs);
    let last = end(&plot.throughput);
    let top = plot.throughput.iter().map(|s| s.per_sec).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption(plot.throughput_label, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..last, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|v| fmt_count(*v))
        .draw()?;
    let points: Vec<(f64, f64)> = plot
        .throughput
        .iter()
        .map(|s| (s.t + s.secs / 2.0, s.per_sec))
        .collect();
    chart.draw_series(LineSeries::new(
        points.iter().copied(),
        COLOURS[0].stroke_width(2),
    ))?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, COLOURS[0].filled())))?;

    // 2. p50 and p99 latency over time, for each kind of latency.
    let max_us = plot
        .latencies
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.p99_us))
        .fold(1.0f64, f64::max)
        * 1.5;
    let last = plot.latencies.iter().map(|(_, r)| end(r)).fold(last, f64::max);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption("latency over time: p50 and p99 (log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..last, (1f64..max_us).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_label_formatter(&|us| fmt_us(*us))
        .draw()?;
    let mut colour = 0;
    for (name, rows) in &plot.latencies {
        for (label, pick) in [("p50", 0), ("p99", 1)] {
            let style = COLOURS[colour % COLOURS.len()].stroke_width(2);
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.ok > 0)
                .map(|r| {
                    (
                        r.t + r.secs / 2.0,
                        if pick == 0 { r.p50_us } else { r.p99_us }.max(1.0),
                    )
                })
                .collect();
            let marker = COLOURS[colour % COLOURS.len()].filled();
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, marker)))?;
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(format!("{name} {label}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            colour += 1;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // 3. The whole distribution: latency against percentile, on a "nines" axis.
    let nines = plot
        .distributions
        .iter()
        .filter_map(|(_, d)| d.last().map(|(q, _)| -(1.0 - q).max(1e-9).log10()))
        .fold(1.0f64, f64::max);
    let max_us = plot
        .distributions
        .iter()
        .filter_map(|(_, d)| d.last().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("latency distribution (log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..nines, (1f64..max_us).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_labels(nines.ceil() as usize + 1)
        .x_label_formatter(&|n| percentile_label(*n))
        .y_label_formatter(&|us| fmt_us(*us))
        .draw()?;
    for (i, (name, points)) in plot.distributions.iter().enumerate() {
        let style = COLOURS[(i * 2) % COLOURS.len()].stroke_width(2);
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|(q, us)| (-(1.0 - q).max(1e-9).log10(), us.max(1.0))),
                style,
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// "90%", "99.9%"... for `nines` nines.
fn percentile_label(nines: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines - 2.0).ceil().max(0.0) as usize;
    format!("{p:.decimals$}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }
}
