//! The benchmark statistics: median ratio and bootstrap interval.

use syncdiff_trainer::benchstats::Comparison;

#[test]
fn summary_of_constant_ratio_is_exact() {
    let c = Comparison {
        a: vec![1.0, 2.0, 3.0, 4.0],
        b: vec![2.0, 4.0, 6.0, 8.0],
    };
    let s = c.summary();
    assert_eq!((s.median, s.low, s.high), (0.5, 0.5, 0.5));
    assert_eq!(s.a_median, 2.5);
}

#[test]
fn interval_brackets_the_median() {
    let c = Comparison {
        a: vec![1.0, 1.1, 0.9, 1.3, 0.8, 1.0, 1.2, 0.95, 1.05, 1.0],
        b: vec![1.0; 10],
    };
    let s = c.summary();
    assert!(
        s.low <= s.median && s.median <= s.high && s.low < s.high,
        "{s:?}"
    );
}
