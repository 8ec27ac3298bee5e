"""tsa_lib: Spark feature-and-scoring job suite for the Temporal Self-Attention fraud model."""

from setuptools import find_packages, setup

# pyspark and delta-spark must be a matching pair: delta-spark 4.4.0 declares
# pyspark >=4.0.1,<=4.2.0 and its jar io.delta:delta-spark_4.2_2.13:4.4.0 is on
# Maven Central (4.4.1's jar is not served there).  conf/maven/pom.xml pins the
# same Delta version; tsa_lib.spark.session checks all three at start-up.
SPARK = ["pyspark==4.2.0", "delta-spark==4.4.0", "importlib_metadata<=8.7.1"]

setup(
    name="tsa_lib",
    version="0.1.0",
    description="Spark batch feature-and-scoring job suite for the TSA fraud model",
    packages=find_packages(include=["tsa_lib", "tsa_lib.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "pandas>=2.1,<3",  # pandas 3 makes pyspark 4.2 warn on every Arrow batch
        "pyarrow>=16",
        "pyyaml>=6",
        "deltalake>=1.1,<2",  # off-Spark reads on GPU nodes
        "torch>=2.4",  # loose: the GPU nodes' preinstalled torch (2.11) satisfies it
        "safetensors>=0.4",
        "matplotlib>=3.8",  # the evaluation report's plots
        "mlflow-skinny>=3.1,<4",  # tracking and registry (tsa_lib.tracking); a file store needs MLFLOW_ALLOW_FILE_STORE
    ],
    extras_require={
        "spark": SPARK,
        "test": SPARK + ["pytest>=8", "hypothesis>=6", "scikit-learn>=1.4"],
        "bench": SPARK + ["scikit-learn>=1.4", "lightgbm>=4", "psutil>=5"],
        "airflow": ["apache-airflow>=3,<4"],  # the Makefile's DAG test pins the same
    },
    package_data={"tsa_lib": ["py.typed"], "tsa_lib.models.presets": ["*.yaml"]},
)
