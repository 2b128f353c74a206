"""Line and column of every key and list item of a YAML file, for `file:line:column` errors.

PyYAML's safe_load drops positions; composing the node tree keeps them. We index every node
by its path (`("rules", 0, "when")`) so a validation error found on the parsed data can be
pointed back at the exact place in the file.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

Path = tuple[str | int, ...]


class Positions:
    """Positions (1-based line, column) of the nodes of one YAML document."""

    def __init__(self, text: str) -> None:
        self._at: dict[Path, tuple[int, int]] = {}
        node = yaml.compose(text)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: Path) -> None:
        self._at[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child = (*path, str(key.value))
                    self._walk(value, child)
                    # A missing/extra key problem is best shown at the key itself.
                    self._at[(*child, "<key>")] = (
                        key.start_mark.line + 1,
                        key.start_mark.column + 1,
                    )
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def of(self, path: Sequence[str | int]) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that exists."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            found = self._at.get(path[:end])
            if found:
                return found
        return (1, 1)

    def key(self, path: Sequence[str | int]) -> tuple[int, int]:
        """The position of the key of `path` (for unknown or duplicate keys)."""
        return self._at.get((*tuple(path), "<key>")) or self.of(path)
