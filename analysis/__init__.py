"""From MLflow runs to answers: DataFrames, sweet-spot computations, reports and plots."""
