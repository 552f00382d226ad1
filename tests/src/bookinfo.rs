//! Istio's Bookinfo traffic-management manifests, unchanged, as the samples
//! ship them (kept with the config crate's tests), built into the test bed
//! so that the suite and the demo apply the very same YAML.

use anyhow::bail;
use serde_json::Value;

/// The documents of the Bookinfo manifest `file`.
pub fn manifest(file: &str) -> anyhow::Result<Vec<Value>> {
    let text = match file {
        "destination-rule-all.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/destination-rule-all.yaml")
        }
        "bookinfo-gateway.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/bookinfo-gateway.yaml")
        }
        "routing-all-v1.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/routing-all-v1.yaml")
        }
        "reviews-v2-for-jason.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/reviews-v2-for-jason.yaml")
        }
        "reviews-50-v3.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/reviews-50-v3.yaml")
        }
        "reviews-90-10.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/reviews-90-10.yaml")
        }
        "ratings-delay-for-jason.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/ratings-delay-for-jason.yaml")
        }
        "ratings-abort-for-jason.yaml" => {
            include_str!("../../config/tests/fixtures/bookinfo/ratings-abort-for-jason.yaml")
        }
        _ => bail!("no Bookinfo manifest {file} in the test bed"),
    };
    Ok(serde_saphyr::from_multiple(text)?)
}
