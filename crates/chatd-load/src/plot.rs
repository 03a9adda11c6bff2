//! `--plot FILE.svg`: the whole run on one time axis (seconds since it started), in three
//! panels that share it: throughput with errors and the target rate; connections open with
//! each server's RSS; p50/p99 latency. A fourth panel shows the latency distributions. The
//! title names the scenario and its parameters; every series has a legend entry, drawn in the
//! headroom above the data so that it hides none of it.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::{fmt_count, fmt_us, Report};

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];
const ERROR: RGBColor = RGBColor(214, 39, 40);
const TARGET: RGBColor = RGBColor(90, 90, 90);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Draws `report`'s plot into an SVG file at `path`.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    draw_svg(report, path).map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))
}

/// "chatd load chat, 100 users, rate 10,000/s, 10 s against 127.0.0.1:8000".
pub fn title(report: &Report) -> String {
    let p = &report.params;
    let mut parts = vec![format!("chatd load {}", report.scenario)];
    for (key, label) in [
        ("conns", "conns"),
        ("users", "users"),
        ("rooms", "rooms"),
        ("members", "members"),
        ("senders", "senders"),
        ("stalled", "stalled"),
        ("pipeline", "pipeline"),
        ("rate", "rate/s"),
        ("requests", "requests"),
        ("duration", "s"),
        ("hold", "s hold"),
        ("procs", "procs"),
    ] {
        let Some(n) = p.get(key).and_then(|v| v.as_f64()) else {
            continue;
        };
        // One request in flight and one process are the defaults: not worth a word.
        if (key == "pipeline" || key == "procs") && n <= 1.0 || key == "stalled" && n == 0.0 {
            continue;
        }
        parts.push(format!(
            "{} {label}",
            if n.fract() == 0.0 {
                fmt_count(n)
            } else {
                format!("{n}")
            }
        ));
    }
    if let Some(m) = p.get("method").and_then(|v| v.as_str()) {
        parts.push(format!(
            "{m} {}",
            p.get("path").and_then(|v| v.as_str()).unwrap_or("")
        ));
    }
    if p.get("auth").and_then(|v| v.as_bool()) == Some(true) {
        parts.push("logged in".into());
    }
    let targets = if report.targets.len() > 2 {
        format!("{} nodes", report.targets.len())
    } else {
        report.targets.join(" + ")
    };
    format!("{} against {targets}", parts.join(", "))
}

fn draw_svg(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 1400)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&title(report), ("sans-serif", 20))?;
    let (time, dist) = root.split_vertically(1060);
    let panels = time.split_evenly((3, 1));
    let tl = &report.timeline;

    // The shared time axis: to the end of whatever was recorded.
    let mut end: f64 = 1.0;
    for (_, rows) in &tl.series {
        if let Some(r) = rows.last() {
            end = end.max(r.t + r.secs);
        }
    }
    for (t, _) in tl
        .open
        .points
        .iter()
        .chain(tl.rss.iter().flat_map(|(_, t)| t.points.iter()))
    {
        end = end.max(*t);
    }
    let end = end * 1.02;

    // 1. Throughput, errors and the target rate.
    let mut top: f64 = 1.0;
    for (_, rows) in &tl.series {
        for r in rows {
            top = top.max(r.per_sec).max(r.errors_per_sec);
        }
    }
    if let Some(rate) = tl.target_rate {
        top = top.max(rate);
    }
    let legend_rows = tl.series.len() + 2;
    let y_top = top * (1.15 + 0.09 * legend_rows as f64);
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("throughput (per second of each interval)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..end, 0f64..y_top)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_labels(count_labels(y_top))
        .y_label_formatter(&|v| fmt_count(*v))
        .draw()?;
    let mut any_errors = false;
    // Deliveries first and wider, so that acks (often the same counts) show on top of them.
    let mut order: Vec<usize> = (0..tl.series.len()).collect();
    order.sort_by_key(|&i| !tl.series[i].0.starts_with("delivery"));
    for i in order {
        let (name, rows) = &tl.series[i];
        let colour = COLOURS[i % COLOURS.len()];
        let width = if name.starts_with("delivery") { 5 } else { 2 };
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.t + r.secs / 2.0, r.per_sec)).collect();
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, colour.filled())))?;
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(width)))?
            .label(format!("{name} / s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(width)));
        if rows.iter().any(|r| r.errors > 0) {
            any_errors = true;
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .map(|r| (r.t + r.secs / 2.0, r.errors_per_sec))
                .collect();
            chart.draw_series(pts.iter().map(|&p| Cross::new(p, 3, ERROR.stroke_width(1))))?;
            chart
                .draw_series(LineSeries::new(pts, ERROR.stroke_width(2)))?
                .label(format!("{name}: errors / s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ERROR.stroke_width(2)));
        }
    }
    if !any_errors {
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (end, 0.0)], ERROR.stroke_width(1)))?
            .label("errors / s: none")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ERROR.stroke_width(1)));
    }
    if let (Some(rate), Some(run)) = (tl.target_rate, report.measured.run.as_ref()) {
        chart
            .draw_series(DashedLineSeries::new(
                [(run.started, rate), (run.ended.max(run.started), rate)],
                8,
                5,
                TARGET.stroke_width(2),
            ))?
            .label(format!("target {}/s", fmt_count(rate)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET.stroke_width(2)));
    }
    phase_marks(&mut chart, report, top * (1.15 + 0.09 * legend_rows as f64))?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    // 2. Connections open, and each server's RSS (MiB, right axis).
    let open_top = tl.open.points.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let rss_top = tl
        .rss
        .iter()
        .flat_map(|(_, t)| t.points.iter().map(|p| p.1 / 1024.0))
        .fold(1.0f64, f64::max);
    let head = 1.2 + 0.12 * (tl.rss.len() + 1) as f64;
    let mut chart = ChartBuilder::on(&panels[1])
        .caption(
            if tl.rss.is_empty() {
                "connections open".to_string()
            } else {
                "connections open (left) and server RSS in MiB (right)".to_string()
            },
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(80)
        .right_y_label_area_size(if tl.rss.is_empty() { 10 } else { 70 })
        .build_cartesian_2d(0f64..end, 0f64..open_top * head)?
        .set_secondary_coord(0f64..end, 0f64..rss_top * head);
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_labels(count_labels(open_top * head))
        .y_label_formatter(&|v| fmt_count(*v))
        .draw()?;
    if !tl.rss.is_empty() {
        chart
            .configure_secondary_axes()
            .y_label_formatter(&|v| format!("{v:.0} MiB"))
            .draw()?;
    }
    let open = COLOURS[0];
    chart
        .draw_series(LineSeries::new(
            tl.open.points.iter().copied(),
            open.stroke_width(2),
        ))?
        .label("connections open")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], open.stroke_width(2)));
    for (i, (pid, track)) in tl.rss.iter().enumerate() {
        let colour = COLOURS[(i + 3) % COLOURS.len()];
        chart
            .draw_secondary_series(LineSeries::new(
                track.points.iter().map(|p| (p.0, p.1 / 1024.0)),
                colour.stroke_width(2),
            ))?
            .label(format!("RSS of server {pid} (MiB)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // 3. p50 and p99 latency per interval, for each series (acks drawn last, on top).
    let mut lat_top: f64 = 10.0;
    for (_, rows) in &tl.series {
        for r in rows.iter().filter(|r| r.ok > 0) {
            lat_top = lat_top.max(r.p99_us);
        }
    }
    let rows_in_legend = 2 * tl.series.len();
    let mut chart = ChartBuilder::on(&panels[2])
        .caption(
            "latency per interval: p50 (line) and p99 (line with triangles), log scale",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(80)
        .build_cartesian_2d(
            0f64..end,
            (1f64..lat_top * 10f64.powf(0.6 + 0.25 * rows_in_legend as f64)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_label_formatter(&|us| fmt_us(*us))
        .draw()?;
    let mut order: Vec<usize> = (0..tl.series.len()).collect();
    // Delivery series under the ack/reply series, which would otherwise be hidden.
    order.sort_by_key(|&i| !tl.series[i].0.starts_with("delivery"));
    for i in order {
        let (name, rows) = &tl.series[i];
        let colour = COLOURS[i % COLOURS.len()];
        let pick = |p99: bool| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.ok > 0)
                .map(|r| (r.t + r.secs / 2.0, if p99 { r.p99_us } else { r.p50_us }.max(1.0)))
                .collect()
        };
        let p50 = pick(false);
        chart
            .draw_series(LineSeries::new(p50, colour.stroke_width(2)))?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        let p99 = pick(true);
        chart.draw_series(p99.iter().map(|&p| TriangleMarker::new(p, 4, colour.filled())))?;
        chart
            .draw_series(LineSeries::new(p99, colour.mix(0.6).stroke_width(1)))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 4, colour.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    // 4. The whole distribution of each latency: value against percentile, "nines" axis.
    let m = &report.measured;
    let mut dists: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    if let Some(d) = &m.connect.series {
        dists.push(("connect".into(), d.distribution()));
    }
    if let Some(r) = &m.run {
        dists.push((r.what.clone(), r.series.distribution()));
    }
    if let Some(d) = &m.delivery {
        for (name, x) in [
            ("delivery", &d.all),
            ("delivery same node", &d.same_node),
            ("delivery cross node", &d.cross_node),
        ] {
            if let Some(x) = x.as_ref().filter(|x| x.ok > 0) {
                if name == "delivery" || d.cross_node.as_ref().is_some_and(|c| c.ok > 0) {
                    dists.push((name.into(), x.distribution()));
                }
            }
        }
    }
    dists.retain(|(_, d)| !d.is_empty());
    let nines = dists
        .iter()
        .filter_map(|(_, d)| d.last().map(|(q, _)| -(1.0 - q).max(1e-9).log10()))
        .fold(1.0f64, f64::max);
    let max_us = dists
        .iter()
        .filter_map(|(_, d)| d.last().map(|p| p.1))
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(&dist)
        .caption("latency distribution (log scale)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(34)
        .y_label_area_size(80)
        .build_cartesian_2d(
            0f64..nines,
            (1f64..max_us * 10f64.powf(0.5 + 0.3 * dists.len() as f64)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_labels(nines.ceil() as usize + 1)
        .x_label_formatter(&|n| percentile_label(*n))
        .y_label_formatter(&|us| fmt_us(*us))
        .draw()?;
    for (i, (name, points)) in dists.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points
                    .iter()
                    .map(|(q, us)| (-(1.0 - q).max(1e-9).log10(), us.max(1.0))),
                colour.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Thin vertical lines where the phases began, labelled.
fn phase_marks<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    report: &Report,
    top: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Seconds per pixel, to tell when a label would run into the next one: a phase that
    // lasted a moment (connecting 50 connections) puts its label a row lower instead.
    let range = chart.x_range();
    let width = f64::from(chart.plotting_area().dim_in_pixel().0.max(1));
    let per_pixel = (range.end - range.start) / width;
    let (mut row, mut free_from) = (0u32, f64::MIN);
    for (name, t) in &report.timeline.phases {
        let grey = RGBColor(170, 170, 170);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*t, 0.0), (*t, top)],
            grey.stroke_width(1),
        )))?;
        row = if *t < free_from { row + 1 } else { 0 };
        free_from = t + (7.0 * name.len() as f64 + 10.0) * per_pixel;
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            (*t, top * (0.97 - 0.06 * f64::from(row))),
            ("sans-serif", 12).into_font().color(&grey),
        )))?;
    }
    Ok(())
}

/// How many labels an axis of counts up to `top` gets: no more than there are whole numbers
/// on it, so that no two labels read the same.
fn count_labels(top: f64) -> usize {
    (top.floor() as usize + 1).clamp(2, 10)
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
