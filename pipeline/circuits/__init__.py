"""Circuit tracing with circuit-tracer: a model converted to TransformerLens, a dictionary in circuit-tracer's format,
attribution graphs and their scores; below the export and the training layers, which both use it."""
