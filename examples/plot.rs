//! Draws bench/compare.sh's results as a PNG: throughput and latency per server and workload.
//!
//!     cargo run --release --example plot -- target/compare.json docs/benchmarks.png
//!
//! Medians over the rounds in the file, as in the table compare.sh prints.

use std::collections::BTreeMap;
use std::error::Error;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SERVERS: [&str; 5] = ["ncat", "redis", "nats", "mob-line", "mob-frame"];

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let input = args.next().unwrap_or_else(|| "target/compare.json".into());
    let output = args.next().unwrap_or_else(|| "docs/benchmarks.png".into());
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "cannot load the font")?;
    let results: Value = serde_json::from_str(&std::fs::read_to_string(&input)?)?;
    let medians = medians(&results);

    let root = BitMapBackend::new(&output, (1400, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let (w1, w3) = top.split_horizontally(700);
    let (w4, w5) = bottom.split_horizontally(700);
    let latency = |w: &'static str| [(w, "p50", 1e-3), (w, "p99", 1e-3), (w, "p999", 1e-3)];
    let panels: [(_, &str, &[Series]); 4] = [
        (
            &w1,
            "W1 and W2: delivered, M msg/s (higher is better)",
            &[
                ("W1", "delivered_per_s", 1e-6),
                ("W2", "delivered_per_s", 1e-6),
            ],
        ),
        (
            &w3,
            "W3 (16 KiB): delivered, GB/s (higher is better)",
            &[("W3", "delivered_mb_per_s", 1e-3)],
        ),
        (
            &w4,
            "W4 (10k msg/s): latency p50 / p99 / p99.9, ms",
            &latency("W4"),
        ),
        (
            &w5,
            "W5 (10k subscribers): latency p50 / p99 / p99.9, ms",
            &latency("W5"),
        ),
    ];
    for (area, title, series) in panels {
        bars(area, title, &medians, series)?;
    }
    root.present()?;
    println!("wrote {output}");
    Ok(())
}

/// One series of bars: (workload, figure, scale to the unit shown).
type Series = (&'static str, &'static str, f64);

/// (server, workload) -> figure -> median over the clean runs.
type Medians = BTreeMap<(String, String), BTreeMap<&'static str, f64>>;

fn medians(results: &Value) -> Medians {
    let mut samples: BTreeMap<(String, String), BTreeMap<&'static str, Vec<f64>>> = BTreeMap::new();
    for run in results["runs"].as_array().into_iter().flatten() {
        if run.get("error").is_some() {
            continue;
        }
        let key = (
            run["server"].as_str().unwrap_or("?").to_string(),
            run["workload"].as_str().unwrap_or("?").to_string(),
        );
        let figures = samples.entry(key).or_default();
        for (name, value) in [
            ("delivered_per_s", &run["delivered_per_s"]),
            ("delivered_mb_per_s", &run["delivered_mb_per_s"]),
            ("p50", &run["latency_us"]["p50"]),
            ("p99", &run["latency_us"]["p99"]),
            ("p999", &run["latency_us"]["p999"]),
        ] {
            if let Some(v) = value.as_f64() {
                figures.entry(name).or_default().push(v);
            }
        }
    }
    samples
        .into_iter()
        .map(|(key, figures)| {
            let medians = figures
                .into_iter()
                .map(|(name, mut v)| {
                    v.sort_by(f64::total_cmp);
                    (name, v[v.len() / 2])
                })
                .collect();
            (key, medians)
        })
        .collect()
}

/// Grouped bars: one group per server, one bar per (workload, figure) series.
fn bars(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    medians: &Medians,
    series: &[Series],
) -> Result<(), Box<dyn Error>> {
    let value = |server: &str, (workload, figure, scale): (&str, &str, f64)| {
        medians
            .get(&(server.to_string(), workload.to_string()))
            .and_then(|f| f.get(figure))
            .map(|v| v * scale)
    };
    let max = SERVERS
        .iter()
        .flat_map(|s| series.iter().filter_map(move |&x| value(s, x)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..SERVERS.len() as f64, 0.0..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(SERVERS.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                SERVERS.get(i as usize).unwrap_or(&"").to_string()
            } else {
                String::new()
            }
        })
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (k, &s) in series.iter().enumerate() {
        let color = Palette99::pick(k).mix(0.9);
        chart
            .draw_series(SERVERS.iter().enumerate().filter_map(|(i, server)| {
                let v = value(server, s)?;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v)],
                    color.filled(),
                ))
            }))?
            .label(format!("{} {}", s.0, s.1))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
