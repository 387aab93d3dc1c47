"""The export formats, one line each: `export.format` -> the module writing it.

A format module has `NAME`, `LIBRARY` (the model card's library_name), `check(run)` (ConfigError for a run it
cannot hold), `write(run, folded, folder)` and `usage(run)` (the card's loading lines).
"""

from types import ModuleType

from pipeline.export import circuit_tracer, saelens, sparsify

FORMATS: dict[str, ModuleType] = {module.NAME: module for module in (saelens, circuit_tracer, sparsify)}
