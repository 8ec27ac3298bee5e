"""Model-quality benchmarks: the LightGBM peers the TSA model is compared with (issue 9)."""
