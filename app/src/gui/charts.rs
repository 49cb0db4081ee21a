//! Charts (egui_plot): training curves with exponential smoothing, and histograms.

use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints, VLine};

/// Exponential moving average as TensorBoard draws it (debiased), `weight` in [0, 1).
pub fn smooth(points: &[[f64; 2]], weight: f64) -> Vec<[f64; 2]> {
    let mut last = 0.0;
    let mut n = 0i32;
    points
        .iter()
        .filter(|p| p[1].is_finite())
        .map(|p| {
            last = last * weight + (1.0 - weight) * p[1];
            n += 1;
            let debias = 1.0 - weight.powi(n);
            [p[0], if debias > 0.0 { last / debias } else { p[1] }]
        })
        .collect()
}

/// One named series.
pub struct Series {
    pub name: String,
    pub points: Vec<[f64; 2]>,
}

/// A line chart of several series; each is drawn raw (thin) and smoothed when `smoothing` > 0.
pub fn lines(ui: &mut egui::Ui, id: &str, y_label: &str, series: &[Series], smoothing: f64, height: f32) {
    Plot::new(id).legend(Legend::default()).x_axis_label("step").y_axis_label(y_label).height(height).allow_scroll(false).show(ui, |p| {
        for s in series.iter().filter(|s| !s.points.is_empty()) {
            if smoothing > 0.0 && s.points.len() > 2 {
                p.line(Line::new(format!("{} (raw)", s.name), PlotPoints::new(s.points.clone())).width(1.0));
                p.line(Line::new(s.name.clone(), PlotPoints::new(smooth(&s.points, smoothing))).width(2.0));
            } else {
                p.line(Line::new(s.name.clone(), PlotPoints::new(s.points.clone())).width(2.0));
            }
        }
    });
}

/// Bars for (low, high, count) bins, with an optional marker line (e.g. max_seq_len).
pub fn histogram(ui: &mut egui::Ui, id: &str, bins: &[(usize, usize, usize)], marker: Option<f64>) {
    let bars: Vec<Bar> =
        bins.iter().map(|&(lo, hi, n)| Bar::new((lo + hi) as f64 / 2.0, n as f64).width((hi - lo) as f64 * 0.95)).collect();
    Plot::new(id).x_axis_label("tokens").y_axis_label("examples").height(220.0).allow_scroll(false).show(ui, |p| {
        p.bar_chart(BarChart::new("examples", bars));
        if let Some(x) = marker {
            p.vline(VLine::new("max_seq_len", x));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_a_debiased_ema() {
        let pts: Vec<[f64; 2]> = (0..5).map(|i| [i as f64, 10.0]).collect();
        assert!(smooth(&pts, 0.9).iter().all(|p| (p[1] - 10.0).abs() < 1e-9), "constant stays constant");
        let s = smooth(&[[0.0, 0.0], [1.0, 1.0]], 0.5);
        // second value: (0.5·0 + 0.5·1) / (1 − 0.25) = 2/3
        assert!((s[1][1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(smooth(&[[0.0, f64::NAN], [1.0, 2.0]], 0.5), vec![[1.0, 2.0]]);
    }
}
