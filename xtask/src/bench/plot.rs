//! PNG plots of the offered-load sweep: throughput, RTT percentiles, CPU per packet.
//! Text is drawn with the system's DejaVu Sans (Debian `fonts-dejavu-core`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use plotters::{prelude::*, style::FontStyle};

use super::{Run, Scenario, Server, table};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (1100, 650);

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

fn color(s: Server) -> RGBColor {
    match s {
        Server::Direct => RGBColor(120, 120, 120),
        Server::Coturn => RGBColor(200, 40, 40),
        Server::Userspace => RGBColor(40, 90, 200),
        Server::Xdp => RGBColor(20, 150, 60),
    }
}

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("reading {FONT} for the plots' text (apt-get install fonts-dejavu-core)")
    })?;
    // plotters keeps fonts for the whole process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

/// (offered rate, value) per server over the sweep scenarios.
fn series(
    sc: &[Scenario],
    runs: &[Run],
    server: Server,
    value: impl Fn(&Run, usize) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = (0..sc.len())
        .filter(|&k| sc[k].sweep)
        .filter_map(|k| {
            let r = table::find(runs, k, server)?;
            Some((sc[k].rate as f64, value(r, k)?))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn servers(runs: &[Run]) -> Vec<Server> {
    let mut s: Vec<Server> = runs.iter().map(|r| r.server).collect();
    s.sort();
    s.dedup();
    s
}

/// Writes the three plots; returns their paths.
pub fn all(out: &Path, sc: &[Scenario], runs: &[Run]) -> Result<Vec<PathBuf>> {
    if !sc.iter().any(|s| s.sweep) {
        return Ok(Vec::new());
    }
    register_font()?;
    let xmax = sc
        .iter()
        .filter(|s| s.sweep)
        .map(|s| s.rate)
        .max()
        .unwrap_or(1) as f64
        * 1.1;
    let files = vec![
        out.join("throughput.png"),
        out.join("rtt.png"),
        out.join("cpu.png"),
    ];
    throughput(&files[0], sc, runs, xmax)?;
    rtt(&files[1], sc, runs, xmax)?;
    cpu(&files[2], sc, runs, xmax)?;
    Ok(files)
}

fn throughput(path: &Path, sc: &[Scenario], runs: &[Run], xmax: f64) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput vs offered load (1000 allocations)",
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, 0f64..xmax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered echoes/s")
        .y_desc("echoes/s back")
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(DashedLineSeries::new(
            vec![(0.0, 0.0), (xmax, xmax)],
            6,
            6,
            BLACK.mix(0.3).into(),
        ))
        .map_err(err)?
        .label("offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for s in servers(runs) {
        let pts = series(sc, runs, s, |r, _| r.traffic().map(|t| t.received_per_sec));
        line(&mut chart, &pts, s, s.label(), false)?;
    }
    legend(&mut chart)?;
    root.present().map_err(err)
}

fn rtt(path: &Path, sc: &[Scenario], runs: &[Run], xmax: f64) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all: Vec<f64> = runs
        .iter()
        .filter(|r| sc[r.scenario].sweep)
        .filter_map(|r| r.traffic())
        .flat_map(|t| [t.rtt_us.p50, t.rtt_us.p99])
        .filter(|v| *v > 0.0)
        .collect();
    let ymin = all.iter().copied().fold(f64::INFINITY, f64::min).max(1.0) / 2.0;
    let ymax = all.iter().copied().fold(10.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "RTT percentiles vs offered load (1000 allocations): p50 solid, p99 dashed",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered echoes/s")
        .y_desc("RTT, µs (log)")
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    for s in servers(runs) {
        let p50 = series(sc, runs, s, |r, _| r.traffic().map(|t| t.rtt_us.p50));
        let p99 = series(sc, runs, s, |r, _| r.traffic().map(|t| t.rtt_us.p99));
        line(&mut chart, &p50, s, s.label(), false)?;
        line(&mut chart, &p99, s, "", true)?;
    }
    legend(&mut chart)?;
    root.present().map_err(err)
}

fn cpu(path: &Path, sc: &[Scenario], runs: &[Run], xmax: f64) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let panels: [(_, &str, bool); 2] = [
        (left, "The run's processes, µs per packet", false),
        (right, "Added by the server, µs per packet", true),
    ];
    for (area, title, added) in panels {
        let value = |r: &Run, k: usize| {
            if added {
                if r.server == Server::Direct {
                    return None;
                }
                table::added_us(runs, k, r.server)
            } else {
                table::run_us(r)
            }
        };
        let pts: Vec<(Server, Vec<(f64, f64)>)> = servers(runs)
            .into_iter()
            .map(|s| (s, series(sc, runs, s, value)))
            .collect();
        let ys = pts.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
        let ymax = ys.clone().fold(0.1, f64::max) * 1.15;
        let ymin = ys.fold(0.0, f64::min) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, ymin..ymax)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("offered echoes/s")
            .y_desc("µs per packet sent or received")
            .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
            .draw()
            .map_err(err)?;
        for (s, p) in &pts {
            line(&mut chart, p, *s, s.label(), false)?;
        }
        legend(&mut chart)?;
    }
    root.present().map_err(err)
}

type Chart<'a, Y> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn line<Y>(
    chart: &mut Chart<'_, Y>,
    pts: &[(f64, f64)],
    s: Server,
    label: &str,
    dashed: bool,
) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    if pts.is_empty() {
        return Ok(());
    }
    let c = color(s);
    let style = c.stroke_width(2);
    let drawn = if dashed {
        chart
            .draw_series(DashedLineSeries::new(pts.to_vec(), 8, 5, style))
            .map_err(err)?
    } else {
        chart
            .draw_series(LineSeries::new(pts.to_vec(), style))
            .map_err(err)?
    };
    if !label.is_empty() {
        drawn
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
        .map_err(err)?;
    Ok(())
}

fn legend<Y>(chart: &mut Chart<'_, Y>) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(err)
}
