"""Whether the libraries tracing runs on are installed: they come with the `interop` extra, not the base install."""

import importlib.util

from pipeline.errors import ConfigError

LIBRARIES = {"circuit_tracer": "circuit-tracer", "transformer_lens": "transformer-lens"}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # the module is in sys.modules as None: imports of it fail
        return False


def check_installed(field: str) -> None:
    """ConfigError naming `field` unless circuit-tracer and TransformerLens can be imported."""
    missing = [package for module, package in LIBRARIES.items() if not _importable(module)]
    if missing:
        raise ConfigError(
            f"{field}: tracing runs on {' and '.join(missing)}, which this environment lacks; "
            "install them with pip install -e '.[interop]'"
        )
