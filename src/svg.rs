//! Minimal SVG line charts (learning curves, benchmark series): no dependency, readable
//! in any browser.

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A line chart of `series` with axes from zero (x) and the data's range (y).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 170.0, 40.0, 50.0);
    let finite = |v: f64| v.is_finite();
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| finite(p.0) && finite(p.1)).collect();
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = nice_ceil(all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05);
    let y_min = all.iter().map(|p| p.1).fold(0.0, f64::min);
    let sx = |x: f64| left + (x / x_max) * (w - left - right);
    let sy = |y: f64| top + (1.0 - (y - y_min) / (y_max - y_min)) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        (w - right + left) / 2.0,
        escape(title)
    );
    let (x0, x1, y0, y1) = (sx(0.0), sx(x_max), sy(y_min), sy(y_max));
    s += &format!("<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>\n");
    s += &format!("<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\"/>\n");
    for i in 0..=4 {
        let (xv, yv) = (x_max * i as f64 / 4.0, y_min + (y_max - y_min) * i as f64 / 4.0);
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", sx(xv), y0 + 18.0, tick(xv));
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", x0 - 6.0, sy(yv) + 4.0, tick(yv));
        s += &format!("<line x1=\"{x0}\" y1=\"{0}\" x2=\"{x1}\" y2=\"{0}\" stroke=\"#ddd\"/>\n", sy(yv));
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        (x0 + x1) / 2.0,
        h - 10.0,
        escape(x_label)
    );
    s += &format!(
        "<text x=\"16\" y=\"{0}\" transform=\"rotate(-90 16 {0})\" text-anchor=\"middle\">{1}</text>\n",
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .points
            .iter()
            .filter(|p| finite(p.0) && finite(p.1))
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            ser.color,
            pts.join(" ")
        );
        let ly = top + 10.0 + 20.0 * i as f64;
        s += &format!(
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{2}\" stroke-width=\"3\"/>\
             <text x=\"{3}\" y=\"{4}\">{5}</text>\n",
            w - right + 15.0,
            w - right + 35.0,
            ser.color,
            w - right + 40.0,
            ly + 4.0,
            escape(ser.name)
        );
    }
    s + "</svg>\n"
}

/// Grouped bars: one group per `(label, values)`, one bar per series (`series` names the
/// bars, in order, with a legend).
pub fn bar_chart(title: &str, series: &[String], groups: &[(String, Vec<f64>)]) -> String {
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    // Widths from the text they must hold (about 7 px per character at 12 px).
    let longest = |it: &mut dyn Iterator<Item = usize>| it.max().unwrap_or(0) as f64 * 7.0;
    let label_w = longest(&mut groups.iter().map(|g| g.0.chars().count()));
    let legend_w = longest(&mut series.iter().map(|n| n.chars().count()));
    let (left, top, bottom, bar_w) = (70.0, 40.0, 90.0, 22.0);
    let group_w = (30.0 + 24.0 * series.len() as f64).max(label_w + 20.0);
    let plot_h = 280.0;
    let w = (left + group_w * groups.len().max(1) as f64 + 40.0).max(left + legend_w + 60.0);
    let h = top + plot_h + bottom + 20.0 * series.len() as f64;
    let y_max = nice_ceil(groups.iter().flat_map(|g| g.1.iter().copied()).fold(0.0, f64::max).max(1e-9) * 1.05);
    let sy = |v: f64| top + plot_h * (1.0 - v / y_max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    let base = sy(0.0);
    s += &format!("<line x1=\"{left}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>\n", w - 20.0);
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 6.0, sy(v) + 4.0, tick(v));
    }
    for (g, (label, values)) in groups.iter().enumerate() {
        let x0 = left + 15.0 + g as f64 * group_w + (group_w - 30.0 - values.len() as f64 * (bar_w + 2.0)) / 2.0;
        for (i, &v) in values.iter().enumerate() {
            let x = x0 + i as f64 * (bar_w + 2.0);
            s += &format!(
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar_w}\" height=\"{:.1}\" fill=\"{}\"><title>{v:.1}</title></rect>\n",
                sy(v),
                base - sy(v),
                COLORS[i % COLORS.len()]
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x0 + values.len() as f64 * (bar_w + 2.0) / 2.0,
            base + 18.0,
            escape(label)
        );
    }
    for (i, name) in series.iter().enumerate() {
        let y = top + plot_h + 50.0 + 20.0 * i as f64;
        s += &format!(
            "<rect x=\"{left}\" y=\"{}\" width=\"14\" height=\"14\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            y - 11.0,
            COLORS[i % COLORS.len()],
            left + 20.0,
            y,
            escape(name)
        );
    }
    s + "</svg>\n"
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at least `v`: axis ends that divide into round
/// quarter ticks.
fn nice_ceil(v: f64) -> f64 {
    let e = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * e).find(|&x| x >= v).unwrap_or(10.0 * e)
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_polyline_per_series_and_escapes_text() {
        let svg = line_chart(
            "KL <held-out>",
            "step",
            "nats",
            &[
                Series { name: "soft", color: "#1f77b4", points: vec![(0.0, 0.3), (10.0, 0.1)] },
                Series { name: "hard", color: "#d62728", points: vec![(0.0, 0.3), (10.0, f64::NAN)] },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("KL &lt;held-out&gt;") && svg.ends_with("</svg>\n"));
    }
}
