//! The soak's verdicts on its samples: the trend of a series after the
//! warm-up, and whether a series stayed flat.
//!
//! Resident memory is judged by its slope, not by two ends: a line through
//! every sample after the warm-up tells a steady creep (every sample above
//! the last) from noise (samples above and below the line), where the
//! difference between a few first and a few last samples mistakes a burst
//! near either end for growth or hides a slow creep in noise. The line is
//! Theil and Sen's (the median of the slopes between every two samples):
//! resident memory has spikes (a burst of large frames, memory handed back
//! a moment later), and up to a quarter of the samples can be spikes
//! without moving the median, where a least-squares line follows each one.

/// A straight line fitted through `(x, y)` points by least squares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Line {
    /// Change of `y` per unit of `x`.
    pub(crate) slope: f64,
    /// `y` at `x = 0`.
    pub(crate) intercept: f64,
}

impl Line {
    /// The line's value at `x`.
    pub(crate) fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// The least-squares line through `points`; `None` with fewer than two
/// points or when every `x` is the same (no slope to speak of).
pub(crate) fn fit(points: &[(f64, f64)]) -> Option<Line> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    if sxx <= f64::EPSILON * n {
        return None;
    }
    let slope = sxy / sxx;
    Some(Line {
        slope,
        intercept: mean_y - slope * mean_x,
    })
}

/// The Theil–Sen line through `points`: the median of the slopes between
/// every two points of different `x`, and the median intercept for that
/// slope; `None` when no two points differ in `x`.
pub(crate) fn robust_fit(points: &[(f64, f64)]) -> Option<Line> {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, (x1, y1)) in points.iter().enumerate() {
        for (x2, y2) in &points[i + 1..] {
            if x2 != x1 {
                slopes.push((y2 - y1) / (x2 - x1));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let slope = median(&slopes);
    let intercepts: Vec<f64> = points.iter().map(|(x, y)| y - slope * x).collect();
    Some(Line {
        slope,
        intercept: median(&intercepts),
    })
}

/// The trend of one series after the warm-up, from samples taken at
/// seconds since the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Trend {
    /// The Theil–Sen line, `y` against seconds.
    pub(crate) line: Line,
    /// The least-squares slope per minute, for the record.
    pub(crate) least_squares_per_minute: f64,
    /// The fitted change per minute, in the series' unit.
    pub(crate) per_minute: f64,
    /// The same, in percent of the fitted level at the first sample.
    pub(crate) percent_per_minute: f64,
    /// The fitted change over the whole span, in percent of that level.
    pub(crate) percent_over_span: f64,
    /// Seconds from the first sample to the last.
    pub(crate) span: f64,
}

/// The fewest samples after the warm-up that a trend is computed from.
pub(crate) const MIN_SAMPLES: usize = 6;

/// The trend of `samples` (seconds, value), or why there is none: fewer
/// than [`MIN_SAMPLES`] samples (a run that ended during its warm-up), or
/// all taken at one instant.
pub(crate) fn trend(samples: &[(f64, f64)]) -> Result<Trend, String> {
    if samples.len() < MIN_SAMPLES {
        return Err(format!(
            "{} samples after the warm-up, at least {MIN_SAMPLES} needed: no trend",
            samples.len()
        ));
    }
    let line = robust_fit(samples).ok_or("every sample taken at the same instant: no trend")?;
    let least_squares_per_minute = fit(samples).map_or(0.0, |l| l.slope * 60.0);
    let first = samples
        .iter()
        .map(|(t, _)| *t)
        .fold(f64::INFINITY, f64::min);
    let last = samples
        .iter()
        .map(|(t, _)| *t)
        .fold(f64::NEG_INFINITY, f64::max);
    let level = line.at(first).abs().max(1.0);
    let per_minute = line.slope * 60.0;
    Ok(Trend {
        line,
        least_squares_per_minute,
        per_minute,
        percent_per_minute: per_minute / level * 100.0,
        percent_over_span: line.slope * (last - first) / level * 100.0,
        span: last - first,
    })
}

/// The median of `values` (the upper one of an even count); 0 for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// The growth in percent between two moments of a series: the median of
/// the samples in the `window` seconds before `from` against that of the
/// last `window` seconds; `None` when either window holds no sample.
pub(crate) fn growth_between(samples: &[(f64, f64)], from: f64, window: f64) -> Option<f64> {
    let end = samples.iter().map(|(t, _)| *t).fold(f64::NAN, f64::max);
    let pick = |lo: f64, hi: f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|(t, _)| *t >= lo && *t <= hi)
            .map(|(_, v)| *v)
            .collect()
    };
    let before = pick(from - window, from);
    let last = pick(end - window, end);
    if before.is_empty() || last.is_empty() {
        return None;
    }
    let base = median(&before).max(1.0);
    Some((median(&last) - base) / base * 100.0)
}

/// Whether a count (open files, tasks) stayed flat after the warm-up: its
/// fitted change over the span is at most `tolerance` (in the count's
/// unit), so that neither a steady rise nor a staircase passes, while a
/// count that comes and goes with the load does. The error says by how much
/// it rose.
pub(crate) fn flat(name: &str, samples: &[(f64, f64)], tolerance: f64) -> Result<Trend, String> {
    let trend = trend(samples).map_err(|err| format!("{name}: {err}"))?;
    let rise = trend.line.slope * trend.span;
    if rise > tolerance {
        return Err(format!(
            "{name} rose by {rise:.1} over {:.0} s after the warm-up ({:+.2}/min), more than {tolerance}",
            trend.span, trend.per_minute
        ));
    }
    Ok(trend)
}

/// A count's level in the first and in the second half of its samples
/// after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Halves {
    pub(crate) first: u64,
    pub(crate) second: u64,
}

/// Which level of each half of a count's samples is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// The lowest value: for a count that comes and goes with the load (live
    /// threads, one per burst of blocking work, on top of the runtime's). A
    /// leaked one never ends, so it lifts every later floor, while the swings
    /// of the load leave the lowest value of a half alone, where a fitted
    /// line follows them.
    Floor,
    /// The median: for a count meant to be constant, whose samples are off
    /// now and then (the tasks beyond the handlers in flight, two gauges read
    /// a moment apart). A leak moves the median of the later half; a sample
    /// off either way moves neither median.
    Median,
}

impl Level {
    fn of(self, half: &[u64]) -> u64 {
        match self {
            Level::Floor => half.iter().copied().min().unwrap_or(0),
            Level::Median => {
                let mut sorted = half.to_vec();
                sorted.sort_unstable();
                sorted.get(sorted.len() / 2).copied().unwrap_or(0)
            }
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Floor => "floor",
            Level::Median => "median",
        }
    }
}

/// Whether a count stayed flat: its `level` in the second half of the
/// samples is at most `tolerance` above that in the first.
pub(crate) fn flat_level(
    name: &str,
    samples: &[u64],
    level: Level,
    tolerance: u64,
) -> Result<Halves, String> {
    if samples.len() < MIN_SAMPLES {
        return Err(format!(
            "{name}: {} samples after the warm-up, at least {MIN_SAMPLES} needed: no {}",
            samples.len(),
            level.name()
        ));
    }
    let (first, second) = samples.split_at(samples.len() / 2);
    let halves = Halves {
        first: level.of(first),
        second: level.of(second),
    };
    if halves.second > halves.first + tolerance {
        return Err(format!(
            "the {} of {name} rose from {} to {} between the halves of the run after the warm-up, more than {tolerance}",
            level.name(),
            halves.first,
            halves.second
        ));
    }
    Ok(halves)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64, from: u32, to: u32) -> Vec<(f64, f64)> {
        (from..=to)
            .map(|t| (f64::from(t), f(f64::from(t))))
            .collect()
    }

    #[test]
    fn the_fitted_line_of_exact_points_is_their_line() {
        let line = fit(&series(|t| 1000.0 + 2.5 * t, 0, 10)).unwrap();
        assert!((line.slope - 2.5).abs() < 1e-9, "{line:?}");
        assert!((line.intercept - 1000.0).abs() < 1e-9, "{line:?}");
        assert!((line.at(4.0) - 1010.0).abs() < 1e-9);
    }

    #[test]
    fn spikes_move_the_robust_slope_little_and_the_least_squares_one_much() {
        // Flat at 16 MiB with a +3 MiB spike every 5 s, the last ones late.
        let spiky = |t: f64| {
            16384.0
                + if (t as u64).is_multiple_of(5) && t > 30.0 {
                    3072.0
                } else {
                    0.0
                }
        };
        let points = series(spiky, 12, 59);
        let robust = robust_fit(&points).unwrap();
        let least = fit(&points).unwrap();
        assert!(robust.slope.abs() < 1e-9, "{robust:?}");
        assert!(least.slope * 60.0 > 400.0, "{least:?}");
        // A creep is still a creep.
        let creep = series(|t| spiky(t) + 10.0 * t, 12, 59);
        let robust = robust_fit(&creep).unwrap();
        assert!((robust.slope - 10.0).abs() < 1e-9, "{robust:?}");
        assert!(
            (robust.at(20.0) - (16384.0 + 200.0)).abs() < 1e-6,
            "{robust:?}"
        );
        assert_eq!(robust_fit(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn no_line_through_one_point_or_one_instant() {
        assert_eq!(fit(&[]), None);
        assert_eq!(fit(&[(1.0, 5.0)]), None);
        assert_eq!(fit(&[(3.0, 5.0), (3.0, 9.0), (3.0, 1.0)]), None);
    }

    #[test]
    fn noise_around_a_level_has_no_slope_but_a_creep_under_noise_does() {
        // Alternating ±200 KiB around 16 MiB: the ends differ by 400 KiB
        // (2.4%), the fitted slope is next to nothing.
        let noisy = series(
            |t| {
                16384.0
                    + if (t as u64).is_multiple_of(2) {
                        200.0
                    } else {
                        -200.0
                    }
            },
            12,
            59,
        );
        let flat = trend(&noisy).unwrap();
        assert!(flat.percent_per_minute.abs() < 0.2, "{flat:?}");
        // 600 KiB/min under the same noise.
        let creeping = series(
            |t| {
                16384.0
                    + 10.0 * t
                    + if (t as u64).is_multiple_of(2) {
                        200.0
                    } else {
                        -200.0
                    }
            },
            12,
            59,
        );
        let creep = trend(&creeping).unwrap();
        assert!((creep.per_minute - 600.0).abs() < 60.0, "{creep:?}");
        assert!(creep.percent_per_minute > 3.0, "{creep:?}");
    }

    #[test]
    fn the_percentages_are_of_the_level_at_the_first_sample() {
        // 100 -> 110 over 100 s, sampled from t = 20.
        let t = trend(&series(|t| 100.0 + (t - 20.0) / 10.0, 20, 120)).unwrap();
        assert!((t.span - 100.0).abs() < 1e-9);
        assert!((t.percent_over_span - 10.0).abs() < 1e-6, "{t:?}");
        assert!((t.percent_per_minute - 6.0).abs() < 1e-6, "{t:?}");
    }

    #[test]
    fn a_run_that_ends_during_the_warm_up_has_no_trend() {
        assert!(trend(&[]).is_err());
        assert!(trend(&series(|_| 1.0, 0, 4)).is_err());
        assert!(trend(&series(|_| 1.0, 0, 5)).is_ok());
    }

    #[test]
    fn growth_between_two_moments_compares_medians_of_windows() {
        // 100 until t = 300, then a burst, then 101 in the last minute.
        let mut samples = series(|_| 100.0, 240, 300);
        samples.push((301.0, 500.0));
        samples.extend(series(|_| 101.0, 1740, 1800));
        let growth = growth_between(&samples, 300.0, 60.0).unwrap();
        assert!((growth - 1.0).abs() < 1e-9, "{growth}");
        assert_eq!(growth_between(&samples, 100.0, 60.0), None);
    }

    #[test]
    fn a_count_that_comes_and_goes_is_flat_and_one_that_climbs_is_not() {
        // Tasks coming and going with the load: 20 to 140 and back.
        let busy = series(|t| 20.0 + (t as u64 % 7) as f64 * 20.0, 12, 59);
        assert!(flat("tasks", &busy, 16.0).is_ok());
        // One file more every 10 s: 5 more over 48 s.
        let leaking = series(|t| 12.0 + (t / 10.0).floor(), 12, 59);
        let err = flat("open files", &leaking, 2.0).unwrap_err();
        assert!(err.contains("open files rose by"), "{err}");
        assert!(flat("open files", &series(|_| 12.0, 12, 59), 2.0).is_ok());
    }

    #[test]
    fn the_floor_of_a_busy_count_ignores_its_peaks_but_not_a_leak() {
        // Handlers in flight: 0 to 230 on top of 8, a quiet moment every 9 s.
        let busy = |t: u64| {
            8 + if t.is_multiple_of(9) {
                0
            } else {
                (t * 37) % 230
            }
        };
        let samples: Vec<u64> = (12..=59).map(busy).collect();
        assert_eq!(
            flat_level("tasks", &samples, Level::Floor, 8),
            Ok(Halves {
                first: 8,
                second: 8
            })
        );
        // One task leaked every 2 s: the second half's floor is 12 higher.
        let leaking: Vec<u64> = (12..=59).map(|t| busy(t) + (t - 12) / 2).collect();
        let err = flat_level("tasks", &leaking, Level::Floor, 8).unwrap_err();
        assert!(err.contains("the floor of tasks rose from"), "{err}");
        assert!(flat_level("tasks", &samples[..5], Level::Floor, 8).is_err());
    }

    #[test]
    fn the_median_of_a_constant_count_ignores_samples_off_either_way_but_not_a_leak() {
        // 7 to 9, with a sample far off either way now and then.
        let count = |t: u64| match t % 11 {
            0 => 0,
            5 => 90,
            _ => 7 + t % 3,
        };
        let samples: Vec<u64> = (12..=59).map(count).collect();
        let halves = flat_level("tasks", &samples, Level::Median, 8).unwrap();
        assert!((7..=9).contains(&halves.first), "{halves:?}");
        // The floor of the same samples is 0 in both halves: it says nothing.
        assert_eq!(
            flat_level("tasks", &samples, Level::Floor, 8)
                .unwrap()
                .first,
            0
        );
        // One task kept every 2 s.
        let leaking: Vec<u64> = (12..=59).map(|t| count(t) + (t - 12) / 2).collect();
        let err = flat_level("tasks", &leaking, Level::Median, 8).unwrap_err();
        assert!(err.contains("the median of tasks rose from"), "{err}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_upper_middle() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
