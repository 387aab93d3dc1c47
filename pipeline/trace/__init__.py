"""Circuit tracing: attribution graphs of the trained transcoders and CLTs, their pictures, feature cards and server."""
