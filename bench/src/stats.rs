//! Small statistics over measured series, pure.

use std::time::Instant;

/// Least-squares slope of `y` over `x` (units of y per unit of x); `None` with fewer than two
/// points or when every `x` is the same.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|&(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|&(_, y)| y).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// The `q` quantile (0 ≤ q ≤ 1) of `sorted` (ascending) by nearest rank: the smallest value with
/// at least a share `q` of the values at or below it (`q = 0` gives the minimum); `None` when
/// empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // The tolerance keeps q × n = 7.000000000000001 (0.07 × 100) at rank 7.
    let rank = (q * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Rates of a counter read at times `(time, count so far)`, oldest first: one
/// `(start, end, count per second)` per pair of consecutive readings; a pair of equal times
/// is skipped.
pub fn interval_rates(
    readings: &[(Instant, f64)],
) -> impl Iterator<Item = (Instant, Instant, f64)> + '_ {
    readings.windows(2).filter_map(|pair| {
        let ((from, count_from), (to, count_to)) = (pair[0], pair[1]);
        let seconds = to.saturating_duration_since(from).as_secs_f64();
        (seconds > 0.0).then(|| (from, to, (count_to - count_from) / seconds))
    })
}

/// Largest of `values`; `None` when empty.
pub fn max(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    values.into_iter().reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn slope_of_a_line_is_exact() {
        let points: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 3.0 - 0.5 * i as f64)).collect();
        assert!(close(slope(&points).unwrap(), -0.5));
    }

    #[test]
    fn slope_does_not_depend_on_the_origin_or_the_order() {
        let mut points: Vec<(f64, f64)> = (0..50)
            .map(|i| (1e9 + i as f64 * 0.5, 40_000.0 + 2.0 * i as f64 * 0.5))
            .collect();
        points.reverse();
        assert!(close(slope(&points).unwrap(), 2.0));
    }

    #[test]
    fn symmetric_noise_around_a_flat_level_has_no_slope() {
        // A sawtooth over whole periods: flat on average.
        let points: Vec<(f64, f64)> = (0..400)
            .map(|i| (i as f64, 100.0 + [0.0, 5.0, -5.0, 0.0][i % 4]))
            .collect();
        assert!(slope(&points).unwrap().abs() < 0.01);
        let constant = [(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)];
        assert!(close(slope(&constant).unwrap(), 0.0));
    }

    #[test]
    fn too_few_points_or_one_x_have_no_slope() {
        assert_eq!(slope(&[]), None);
        assert_eq!(slope(&[(1.0, 2.0)]), None);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), None);
    }

    #[test]
    fn percentiles_are_nearest_ranks() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 0.5), Some(50.0));
        assert_eq!(percentile(&hundred, 0.07), Some(7.0));
        assert_eq!(percentile(&hundred, 0.99), Some(99.0));
        assert_eq!(percentile(&hundred, 0.999), Some(100.0));
        assert_eq!(percentile(&hundred, 1.0), Some(100.0));
        assert_eq!(percentile(&hundred, 0.0), Some(1.0));
        let thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&thousand, 0.999), Some(999.0));
        assert_eq!(percentile(&thousand, 0.9), Some(900.0));
        assert_eq!(percentile(&[4.0], 0.5), Some(4.0));
        assert_eq!(percentile(&[1.0, 2.0], 0.5), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 0.51), Some(2.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(max([1.0, 9.0, 3.0]), Some(9.0));
        assert_eq!(max(Vec::<f64>::new()), None);
    }
}
