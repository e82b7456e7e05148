"""Ray Tune glue: teacher-zoo building as Ray tasks, the student trainable, Tuner assembly, MLflow logging."""
