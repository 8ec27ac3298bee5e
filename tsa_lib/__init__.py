"""TSA job suite library: configs, Spark stages, the model, training and scoring."""

__version__ = "0.1.0"
