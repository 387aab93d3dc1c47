"""The package's import graph has no cycle: no module reaches itself through a chain of imports.

grimp reads every import statement, at the top of a module or inside a function, so an import
moved into a function to hide a cycle is still seen. Which layer may import which is
import-linter's contract in pyproject.toml (`lint-imports`).
"""

import grimp


def cycles(graph) -> list[tuple[str, ...]]:
    """For each direct import a -> b from which a chain of imports leads back to a: the chain a -> b -> ... -> a."""
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                found.append((importer, *back))
    return found


def package_graph():
    return grimp.build_graph("pipeline", cache_dir=None)


def test_no_module_of_the_package_imports_itself_through_a_chain():
    assert cycles(package_graph()) == []


def test_an_import_that_closes_a_loop_is_found_as_a_cycle():
    graph = package_graph()
    assert graph.chain_exists(importer="pipeline.cli", imported="pipeline.errors")
    graph.add_import(importer="pipeline.errors", imported="pipeline.cli")
    found = cycles(graph)
    assert found and all(chain[0] == chain[-1] for chain in found)
    assert any(chain[:2] == ("pipeline.errors", "pipeline.cli") for chain in found)
