"""`pipeline trace`: attribution graphs of prompts through a trained CLT or transcoder set, with circuit-tracer."""
