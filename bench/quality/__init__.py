"""Model-quality benchmarks: the LightGBM peers the TSA model is compared with (bench/quality/README.md)."""
