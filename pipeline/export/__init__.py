"""The export stage: trained dictionaries written in the formats of SAELens, circuit-tracer and sparsify."""
