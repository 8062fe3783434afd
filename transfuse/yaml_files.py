"""YAML files of every kind (study, run, self-training chain, pretraining): read safely, checked.

A safe loader that refuses a key given twice, refuses alias bombs before expanding them
(:data:`MAX_YAML_VALUES`), and turns every parser error into one line naming the file; plus the
``"<path>: <message>"`` form every spec error takes (keys are checked by
:func:`transfuse.spec.fields.validate`).
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

__all__ = ["MAX_YAML_VALUES", "read_yaml_file", "where"]


def where(path: str, message: str) -> str:
    """``"<path>: <message>"``, or the bare message when there is no file."""
    return f"{path}: {message}" if path else message


def _unique_key_loader() -> type:
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor`: its keys may be overridden, by design
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:  # an unhashable key: SafeLoader reports it
                    break
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); "
                        "give each key once", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


#: Values a YAML file's aliases (``*anchor``) may add once expanded: a "billion laughs" file of a
#: few lines would otherwise grow to billions of values before anything could check it.
MAX_YAML_VALUES = 100_000


def _children(n: Any) -> list[Any]:
    if not isinstance(n.value, list):
        return []
    return [c for item in n.value for c in (item if isinstance(item, tuple) else (item,))]


def _alias_growth(node: Any, limit: int) -> int:
    """How many values aliases add to the file once expanded (a node used ``k`` times counts
    ``k`` times), counted up to just past ``limit``; raises ``ValueError`` on an alias to itself.
    Each node is measured once: cheap however large the expansion."""
    distinct, stack = set(), [node]
    while stack:  # the file's own nodes (what it costs without expansion)
        n = stack.pop()
        if id(n) not in distinct:
            distinct.add(id(n))
            stack.extend(_children(n))
    cap = len(distinct) + limit + 1
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise ValueError("an alias refers to the node that contains it")
        busy.add(key)
        total = 1
        for child in _children(n):
            total = min(total + size(child), cap)
        busy.discard(key)
        sizes[key] = total
        return total

    return size(node) - len(distinct)


def _load_bounded(text: str, path: Any) -> Any:
    """Compose the YAML document, refuse an alias bomb by counting its expansion, then build it."""
    loader = _unique_key_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            grows = _alias_growth(node, MAX_YAML_VALUES)
        except ValueError as e:
            raise ConfigError(f"{path}: {e}; remove the recursive alias") from None
        if grows > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: the file expands to more than {MAX_YAML_VALUES} values "
                              "through its aliases (*anchor); write the values out, or use fewer "
                              "aliases of aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(path: Any, *, what: str) -> Any:
    """The parsed content of a YAML file (safe loader; a key given twice is an error).

    Raises:
        ConfigError: ``"<path>: <what> file not found"``, ``"<path>: not valid YAML (...)"`` or
            ``"<path>: duplicate key 'seed' (line 7); give each key once"``.
    """
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} file not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the {what} file ({e}); give a UTF-8 YAML file") from None
    try:
        return _load_bounded(text, p)  # a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        if e.problem and e.problem.startswith("duplicate key"):
            raise ConfigError(f"{p}: {e.problem}") from None
        raise ConfigError(f"{p}: not valid YAML ({e.problem or type(e).__name__})") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{p}: not valid YAML ({first})") from None
    except RecursionError:  # `[[[[...` thousands deep: the parser recurses once per level
        raise ConfigError(f"{p}: values nested too deeply to read; flatten the file") from None
