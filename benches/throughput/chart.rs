//! throughput.svg: req/s against connections (log scale) in the connection sweep, one line
//! per server.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Outcome;

const COLORS: [RGBColor; 4] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Draws the sweep's points (echo, 64 B, depth 1) as `path`. Returns false, drawing
/// nothing, when the run had no sweep scenario.
pub fn draw(path: &Path, outcomes: &[Outcome]) -> Result<bool, String> {
    // A baseline server's line would share a colour with another: it is in the tables only.
    let sweep: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.scenario.in_sweep() && !crate::baseline::is_base(&o.server))
        .collect();
    if sweep.is_empty() {
        return Ok(false);
    }
    let mut servers: Vec<&str> = Vec::new();
    for o in &sweep {
        if !servers.contains(&o.server.as_str()) {
            servers.push(&o.server);
        }
    }
    let max_conns = sweep
        .iter()
        .map(|o| o.scenario.connections)
        .max()
        .unwrap_or(1);
    let max_rps = sweep
        .iter()
        .map(|o| o.median.req_per_s)
        .fold(0.0_f64, f64::max);
    let x_range = (0.7_f64..(max_conns as f64 * 1.5).max(10.0)).log_scale();
    let y_range = 0.0_f64..(max_rps * 1.15).max(1.0);

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("chart: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Echo throughput vs connections (64 B, depth 1)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("connections (log scale)")
        .y_desc("requests / s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, server) in servers.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points: Vec<(f64, f64)> = sweep
            .iter()
            .filter(|o| o.server == *server)
            .map(|o| (o.scenario.connections as f64, o.median.req_per_s))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*server)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}
