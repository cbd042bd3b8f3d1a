"""Class names of a classifier's outputs: index, WordNet id and readable name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from deepscope.errors import AmbiguousClassError, TargetError, did_you_mean


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
        """Class index of an index, a WordNet id, or a (case-insensitive) name of the class.

        A name that several classes answer to is refused with the candidates: ImageNet has two classes named
        ``crane`` (the bird, 134, and the machine, 517), two ``cardigan`` and two ``maillot``; name such a class
        by its index (``134``) or its WordNet id (``n02012849``) instead. A name that is the readable name of
        exactly one class means that class even when it is also another class's synonym (``partridge`` is 86,
        not the ruffed grouse, 82, whose synonyms include partridge).

        Raises
        ------
        TargetError
            If no class matches (the message suggests the closest names) or several do.
        """
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise TargetError(f"a class is an index, a WordNet id or a name, got {type(label).__name__}.")
        text = str(label).strip()
        if isinstance(label, int) or text.lstrip("-").isdigit():
            i = int(text)
            if not 0 <= i < len(self):
                raise TargetError(f"class index {i} is out of range: the model has {len(self)} classes (0..{len(self) - 1}).")
            return i
        key = text.lower().replace("_", " ")
        matches = _lookup_table(self).get(key)
        if matches is None:
            raise TargetError(f"unknown class {label!r}.{did_you_mean(key, _lookup_table(self))}")
        if len(matches) > 1:
            raise AmbiguousClassError(f"class name {label!r} is ambiguous: {' or '.join(self.qualified(i) for i in matches)}; "
                              "give the index or the WordNet id instead.")
        return matches[0]

    def qualified(self, i: int) -> str:
        """``"134 crane (n02012849)"``: index, readable name and WordNet id (when known)."""
        return f"{i} {self.names[i]}" + (f" ({self.wnids[i]})" if self.wnids else "")

    def describe(self, i: int) -> str:
        """``"207 golden retriever"``: index and readable name."""
        return f"{i} {self.names[i]}"


@cache
def _lookup_table(classes: ClassList) -> dict[str, tuple[int, ...]]:
    """Every lower-case name and WordNet id -> the classes it names: the class whose readable name it is when
    exactly one class has that readable name, else every class it is a name or synonym of."""
    readable: dict[str, list[int]] = {}
    synonyms: dict[str, list[int]] = {}
    for i, name in enumerate(classes.names):
        readable.setdefault(name.lower(), []).append(i)
        for alias in classes.synonyms[i] if classes.synonyms else (name,):
            if i not in synonyms.setdefault(alias.lower(), []):
                synonyms[alias.lower()].append(i)
    table = {key: tuple(found) for key, found in synonyms.items()}
    table.update({key: tuple(found) for key, found in readable.items()})
    if classes.wnids:
        table.update({wnid.lower(): (i,) for i, wnid in enumerate(classes.wnids)})
    return table


@cache
def imagenet_classes() -> ClassList:
    """The 1000 ILSVRC-2012 classes in the order of torchvision's and timm's ImageNet models."""
    text = resources.files("deepscope.resources").joinpath("imagenet_classes.txt").read_text()
    return ClassList.from_lines(text.splitlines())
