//! How evenly keys spread over shards.

use serde::Serialize;

use crate::topology::ShardId;

/// The distribution of a key sample over shards.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistributionReport {
    /// Keys per shard.
    pub counts: Vec<(ShardId, u64)>,
    /// Keys routed.
    pub keys: u64,
    /// Keys that could not be routed.
    pub errors: u64,
    /// Mean keys per shard.
    pub mean: f64,
    /// Standard deviation of keys per shard.
    pub std_dev: f64,
    /// `std_dev / mean`.
    pub coefficient_of_variation: f64,
    /// Largest relative deviation of one shard from the mean, in percent.
    pub max_deviation_pct: f64,
    /// `1 - coefficient_of_variation`, clamped to [0, 1]: 1 is perfectly even.
    pub balance_score: f64,
}

impl DistributionReport {
    /// The report of `counts`.
    pub fn new(counts: Vec<(ShardId, u64)>, errors: u64) -> Self {
        let keys: u64 = counts.iter().map(|(_, c)| c).sum();
        let n = counts.len().max(1) as f64;
        let mean = keys as f64 / n;
        let variance = counts
            .iter()
            .map(|(_, c)| (*c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std_dev = variance.sqrt();
        let cv = if mean > 0.0 { std_dev / mean } else { 0.0 };
        let max_deviation_pct = if mean > 0.0 {
            counts
                .iter()
                .map(|(_, c)| ((*c as f64 - mean) / mean).abs() * 100.0)
                .fold(0.0, f64::max)
        } else {
            0.0
        };
        Self {
            counts,
            keys,
            errors,
            mean,
            std_dev,
            coefficient_of_variation: cv,
            max_deviation_pct,
            balance_score: (1.0 - cv).clamp(0.0, 1.0),
        }
    }

    /// Hot shards: those holding more than `threshold_pct` percent above
    /// the mean (25 means more than 1.25x the mean), busiest first. An even
    /// spread has none, whatever its size.
    pub fn hot_shards(&self, threshold_pct: f64) -> Vec<ShardId> {
        let bar = self.mean * (1.0 + threshold_pct / 100.0);
        let mut hot: Vec<(ShardId, u64)> = self
            .counts
            .iter()
            .filter(|(_, c)| self.mean > 0.0 && *c as f64 > bar)
            .copied()
            .collect();
        hot.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hot.into_iter().map(|(s, _)| s).collect()
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "keys {}  errors {}  mean {:.1}  std dev {:.1}  cv {:.4}  max deviation {:.2}%  balance {:.4}\n",
            self.keys,
            self.errors,
            self.mean,
            self.std_dev,
            self.coefficient_of_variation,
            self.max_deviation_pct,
            self.balance_score
        );
        for (shard, count) in &self.counts {
            let pct = if self.keys > 0 {
                *count as f64 * 100.0 / self.keys as f64
            } else {
                0.0
            };
            out.push_str(&format!("shard {shard:>4}  {count:>10}  {pct:6.2}%\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_shards_are_those_above_the_mean_by_the_threshold() {
        // mean 100: 160 is 60% above, 130 is 30% above, the rest below.
        let report = DistributionReport::new(vec![(0, 40), (1, 160), (2, 130), (3, 70)], 0);
        assert_eq!(report.hot_shards(25.0), vec![1, 2]);
        assert_eq!(report.hot_shards(50.0), vec![1]);
        assert_eq!(report.hot_shards(100.0), Vec::<ShardId>::new());
        let even = DistributionReport::new(vec![(0, 10), (1, 10)], 0);
        assert!(even.hot_shards(0.0).is_empty());
        assert!(
            DistributionReport::new(vec![], 0)
                .hot_shards(0.0)
                .is_empty()
        );
    }
}
