"""Topic matching for the embedded broker: subscriptions by filter, retained messages by topic.

Both are tries over topic levels, so that a publish or a subscribe costs the depth of the
topic, not the number of devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.values: dict[object, T] = {}


class SubscriptionTree(Generic[T]):
    """Filters (with + and #) mapped to subscribers; `match` finds every subscriber of a topic."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()

    def add(self, topic_filter: str, subscriber: object, value: T) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.values[subscriber] = value

    def remove(self, topic_filter: str, subscriber: object) -> None:
        path = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        path[-1].values.pop(subscriber, None)
        for depth in range(len(levels), 0, -1):  # prune empty branches
            node = path[depth]
            if node.values or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]

    def match(self, topic: str) -> list[tuple[object, T]]:
        levels = topic.split("/")
        found: list[tuple[object, T]] = []
        self._match(self._root, levels, 0, found, topic.startswith("$"))
        return found

    def _match(
        self,
        node: _Node[T],
        levels: list[str],
        depth: int,
        found: list[tuple[object, T]],
        system: bool,
    ) -> None:
        wildcards = not (
            system and depth == 0
        )  # 4.7.2: wildcards never match a $ topic's first level
        if wildcards:
            rest = node.children.get("#")
            if rest is not None:
                found.extend(rest.values.items())
        if depth == len(levels):
            found.extend(node.values.items())
            return
        exact = node.children.get(levels[depth])
        if exact is not None:
            self._match(exact, levels, depth + 1, found, system)
        if wildcards:
            single = node.children.get("+")
            if single is not None:
                self._match(single, levels, depth + 1, found, system)


class RetainedStore(Generic[T]):
    """The last retained message per topic; `matching` walks only the branches a filter covers."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self.count = 0

    def set(self, topic: str, value: T | None) -> None:
        """Store, or delete with None (a retained message with an empty payload, 3.3.1.3)."""
        node = self._root
        path = [node]
        levels = topic.split("/")
        for level in levels:
            child = node.children.get(level)
            if child is None:
                if value is None:
                    return
                child = node.children[level] = _Node()
            node = child
            path.append(node)
        if value is None:
            if node.values.pop(topic, None) is not None:
                self.count -= 1
            for depth in range(len(levels), 0, -1):
                if path[depth].values or path[depth].children:
                    break
                del path[depth - 1].children[levels[depth - 1]]
            return
        if topic not in node.values:
            self.count += 1
        node.values[topic] = value

    def get(self, topic: str) -> T | None:
        node: _Node[T] | None = self._root
        for level in topic.split("/"):
            node = node.children.get(level) if node is not None else None
        return node.values.get(topic) if node is not None else None

    def matching(self, topic_filter: str) -> Iterator[tuple[str, T]]:
        yield from self._walk(self._root, topic_filter.split("/"), 0)

    def _walk(self, node: _Node[T], levels: list[str], depth: int) -> Iterator[tuple[str, T]]:
        if depth == len(levels):
            for topic, value in node.values.items():
                yield str(topic), value
            return
        level = levels[depth]
        if level == "#":
            yield from self._everything(node, skip_system=depth == 0)
        elif level == "+":
            for name, child in node.children.items():
                if not (depth == 0 and name.startswith("$")):
                    yield from self._walk(child, levels, depth + 1)
        elif level in node.children:
            yield from self._walk(node.children[level], levels, depth + 1)

    def _everything(self, node: _Node[T], skip_system: bool) -> Iterator[tuple[str, T]]:
        for topic, value in node.values.items():
            yield str(topic), value
        for name, child in node.children.items():
            if not (skip_system and name.startswith("$")):
                yield from self._everything(child, False)
