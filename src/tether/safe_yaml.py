"""Reading YAML with bounds: every YAML text tether reads (a config file, a ``key=value`` override, a run
directory's ``config.yaml``) goes through :func:`load_yaml`.

A config is small, so anything past these bounds is refused in one line before it is built into Python
objects: an alias bomb ("billion laughs": nine aliases of nine aliases of ... expand to billions of values
from a few hundred bytes), a multi-megabyte file, millions of keys, nesting hundreds of levels deep. The
expanded size is counted on the composed node graph, where an alias is one shared node, so the count itself
costs no more than the text. A key given twice in one mapping is refused too (YAML keeps the last one
silently).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tether.errors import ConfigError

#: The largest config text read (bytes).
MAX_BYTES = 1 << 20
#: The most values (scalars, lists, mappings; a scalar counts once per 64 characters) a text may hold once
#: its aliases are expanded: about 6 MB of expanded text at most.
MAX_VALUES = 100_000
#: The deepest nesting of lists and mappings.
MAX_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (first at line {first[key]})", key_node.start_mark
                )
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node, where: str) -> None:
    """Count the values of ``root`` as if its aliases were expanded (each shared node counted once per use,
    from a memo), refusing past :data:`MAX_VALUES` or :data:`MAX_DEPTH`. A recursive alias never finishes a
    node, so it stops at the depth bound."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            line = node.start_mark.line + 1
            raise ConfigError(
                f"{where}:{line}: nested more than {MAX_DEPTH} levels deep (or an alias refers to itself)"
            )
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1 + len(node.value) // 64 if isinstance(node, yaml.ScalarNode) else 1  # long text: more
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > MAX_VALUES:
                    break
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                total += size(key, depth + 1) + size(value, depth + 1)
                if total > MAX_VALUES:
                    break
        if total > MAX_VALUES:
            raise ConfigError(
                f"{where}: more than {MAX_VALUES} values once its aliases are expanded (a config is small; "
                "is this an alias bomb?)"
            )
        sizes[id(node)] = total
        return total

    size(root, 0)


def check_size(size: int, where: str) -> None:
    """Refuse a config text of ``size`` bytes or characters past :data:`MAX_BYTES` (before reading a file)."""
    if size > MAX_BYTES:
        raise ConfigError(f"{where}: {size} bytes; a config is at most {MAX_BYTES} (1 MiB)")


def load_yaml(text: str, where: str) -> Any:
    """Parse one YAML document within the bounds above; ``where`` names it in errors (a path, or
    ``override 'key=value'``). Raises :class:`ConfigError` past a bound; YAML syntax errors, a key given
    twice and Python's own limits (an integer of more than 4300 digits) raise as ``yaml`` and Python do,
    for the caller to place."""
    check_size(len(text), where)
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, where)
        return loader.construct_document(node)
    except RecursionError:  # the composer recurses once per level: past Python's limit before ours
        raise ConfigError(f"{where}: nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts (4300)
        digits = re.search(r"\d{4301}", text)
        line = f":{text.count(chr(10), 0, digits.start()) + 1}" if digits else ""
        raise ConfigError(f"{where}{line}: {str(e).split(':')[0].lower()}") from None
    finally:
        loader.dispose()
