"""Class names of a classifier's outputs: index, WordNet id and readable name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from deepscope.errors import TargetError, did_you_mean


@dataclass(frozen=True)
class ClassList:
    """The classes of a model's output, in output order.

    Parameters
    ----------
    names : tuple of str
        Readable name of each class (the first synonym, e.g. ``"tench"``).
    wnids : tuple of str or None
        WordNet ids (``"n01440764"``) when the classes are ImageNet synsets.
    synonyms : tuple of tuple of str
        Every name a class answers to (lower-case matching), the readable name first.
    """

    names: tuple[str, ...]
    wnids: tuple[str, ...] | None = None
    synonyms: tuple[tuple[str, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def generic(cls, n: int) -> "ClassList":
        """Classes named ``class 0`` ... ``class n-1`` for a model without a class list."""
        return cls(tuple(f"class {i}" for i in range(n)))

    @classmethod
    def from_lines(cls, lines: list[str]) -> "ClassList":
        """Parse ``wnid name, synonym, ...`` lines (the ILSVRC ``synset_words.txt`` format)."""
        wnids, synonyms = [], []
        for line in lines:
            wnid, _, rest = line.strip().partition(" ")
            wnids.append(wnid)
            synonyms.append(tuple(s.strip() for s in rest.split(",") if s.strip()))
        return cls(tuple(s[0] for s in synonyms), tuple(wnids), tuple(synonyms))

    def index(self, label: str | int) -> int:
        """Class index of an index, a WordNet id, or any (case-insensitive) name of the class.

        Raises
        ------
        TargetError
            If no class matches; the message suggests the closest names.
        """
        if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            i = int(label)
            if not 0 <= i < len(self):
                raise TargetError(f"class index {i} is out of range: the model has {len(self)} classes (0..{len(self) - 1}).")
            return i
        lookup = self._lookup()
        key = label.strip().lower().replace("_", " ")
        if key in lookup:
            return lookup[key]
        raise TargetError(f"unknown class {label!r}.{did_you_mean(key, lookup)}")

    def _lookup(self) -> dict[str, int]:
        return _lookup_table(self)

    def describe(self, i: int) -> str:
        """``"207 golden retriever"``: index and readable name."""
        return f"{i} {self.names[i]}"


@cache
def _lookup_table(classes: ClassList) -> dict[str, int]:
    table: dict[str, int] = {}
    for i, name in enumerate(classes.names):
        for alias in classes.synonyms[i] if classes.synonyms else (name,):
            table.setdefault(alias.lower(), i)
        if classes.wnids:
            table.setdefault(classes.wnids[i].lower(), i)
    return table


@cache
def imagenet_classes() -> ClassList:
    """The 1000 ILSVRC-2012 classes in the order of torchvision's and timm's ImageNet models."""
    text = resources.files("deepscope.resources").joinpath("imagenet_classes.txt").read_text()
    return ClassList.from_lines(text.splitlines())
