//! The timeline plot (PNG), drawn without fonts so it needs nothing from
//! the system. Two panels over the test's time axis:
//! - top: operations completed per second, one line each for ok (green),
//!   fail (red) and info (orange);
//! - bottom: the latency of every operation (one dot at its invocation
//!   time; height = latency, capped at the panel top), coloured the same way.
//!
//! Nemesis windows are shaded across both panels: kill red, pause blue,
//! partition yellow, clock purple, disk grey. Faint horizontal lines mark
//! every 50 ops/s (top) and every 250 ms (bottom); README.md explains how
//! to read it.

use std::path::Path;

use plotters::prelude::*;

use crate::history::Event;
use crate::history::Kind;
use crate::history::Process;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 700;
const LATENCY_CAP_MS: f64 = 3_500.0;

fn fault_colour(f: &str) -> Option<RGBColor> {
    Some(match f {
        "kill" => RGBColor(255, 205, 205),
        "pause" => RGBColor(205, 220, 255),
        "partition" => RGBColor(255, 245, 190),
        "clock" => RGBColor(230, 210, 255),
        "disk" => RGBColor(220, 220, 220),
        _ => return None,
    })
}

fn is_heal(f: &str) -> bool {
    matches!(f, "restart" | "resume" | "heal-partition" | "unwrap" | "heal")
}

/// The nemesis windows: (start s, end s, fault).
pub fn nemesis_windows(events: &[Event]) -> Vec<(f64, f64, String)> {
    let secs = |t: u64| t as f64 / 1e9;
    let end = events.last().map_or(0.0, |e| secs(e.time));
    let mut windows = Vec::new();
    let mut open: Option<(f64, String)> = None;
    for e in events.iter().filter(|e| e.process == Process::NEMESIS && e.kind == Kind::Info) {
        if fault_colour(&e.f).is_some() {
            if let Some((start, f)) = open.take() {
                windows.push((start, secs(e.time), f));
            }
            open = Some((secs(e.time), e.f.clone()));
        } else if is_heal(&e.f) {
            if let Some((start, f)) = open.take() {
                windows.push((start, secs(e.time), f));
            }
        }
    }
    if let Some((start, f)) = open {
        windows.push((start, end, f));
    }
    windows
}

/// Draws the timeline of `events` into `path`.
pub fn timeline(events: &[Event], path: &Path) -> anyhow::Result<()> {
    let ops = crate::history::operations(events)?;
    let secs = |t: u64| t as f64 / 1e9;
    let t_end = events.last().map_or(1.0, |e| secs(e.time)).max(1.0);
    let buckets = t_end.ceil() as usize + 1;
    let mut per_sec = [vec![0u32; buckets], vec![0u32; buckets], vec![0u32; buckets]];
    let mut dots: Vec<(f64, f64, usize)> = Vec::new();
    for op in &ops {
        let Some(c) = &op.completion else { continue };
        let class = match c.kind {
            Kind::Ok => 0,
            Kind::Fail => 1,
            _ => 2,
        };
        per_sec[class][(secs(c.time) as usize).min(buckets - 1)] += 1;
        let latency_ms = c.time.saturating_sub(op.invoke.time) as f64 / 1e6;
        dots.push((secs(op.invoke.time), latency_ms.min(LATENCY_CAP_MS), class));
    }
    let max_rate = per_sec.iter().flatten().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let colours = [RGBColor(30, 150, 60), RGBColor(200, 30, 30), RGBColor(240, 140, 0)];
    let windows = nemesis_windows(events);

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("fill: {e}"))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let draw = |area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, y_max: f64, grid: f64, dots_panel: bool| -> anyhow::Result<()> {
        let mut chart = ChartBuilder::on(area).margin(12).build_cartesian_2d(0f64..t_end, 0f64..y_max).map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        for (start, end, f) in &windows {
            let colour = fault_colour(f).unwrap_or(RGBColor(235, 235, 235));
            chart.draw_series(std::iter::once(Rectangle::new([(*start, 0.0), (*end, y_max)], colour.filled()))).map_err(|e| anyhow::anyhow!("window: {e}"))?;
        }
        let mut y = grid;
        while y < y_max {
            chart.draw_series(LineSeries::new([(0.0, y), (t_end, y)], RGBColor(225, 225, 225))).map_err(|e| anyhow::anyhow!("grid: {e}"))?;
            y += grid;
        }
        let mut x = 10.0;
        while x < t_end {
            chart.draw_series(LineSeries::new([(x, 0.0), (x, y_max)], RGBColor(225, 225, 225))).map_err(|e| anyhow::anyhow!("grid: {e}"))?;
            x += 10.0;
        }
        if dots_panel {
            for class in [0, 1, 2] {
                chart
                    .draw_series(dots.iter().filter(|d| d.2 == class).map(|(t, l, _)| Circle::new((*t, *l), 2, colours[class].filled())))
                    .map_err(|e| anyhow::anyhow!("dots: {e}"))?;
            }
        } else {
            for (class, series) in per_sec.iter().enumerate() {
                let points: Vec<(f64, f64)> = series.iter().enumerate().map(|(s, n)| (s as f64 + 0.5, f64::from(*n))).collect();
                chart.draw_series(LineSeries::new(points, colours[class].stroke_width(2))).map_err(|e| anyhow::anyhow!("rate: {e}"))?;
            }
        }
        chart.draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (t_end, y_max)], BLACK.stroke_width(1)))).map_err(|e| anyhow::anyhow!("frame: {e}"))?;
        Ok(())
    };
    draw(&top, max_rate, 50.0, false)?;
    draw(&bottom, LATENCY_CAP_MS * 1.02, 250.0, true)?;
    root.present().map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_timeline_is_a_png_with_nemesis_windows() {
        let mut events = Vec::new();
        let mut push = |kind, f: &str, process, time: u64| {
            let index = events.len() as u64;
            events.push(Event { index, kind, f: f.into(), value: json!({}), process, time });
        };
        for i in 0..200u64 {
            let t = i * 50_000_000;
            push(Kind::Invoke, "read", Process::Client(i % 3), t);
            push(if i % 17 == 0 { Kind::Info } else { Kind::Ok }, "read", Process::Client(i % 3), t + 20_000_000);
            if i == 40 {
                push(Kind::Info, "kill", Process::NEMESIS, t);
            }
            if i == 90 {
                push(Kind::Info, "restart", Process::NEMESIS, t);
            }
        }
        assert_eq!(nemesis_windows(&events), vec![(2.0, 4.5, "kill".to_owned())]);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("timeline.png");
        timeline(&events, &path).expect("draw");
        let bytes = std::fs::read(&path).expect("read the png");
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
