"""Bad-input reporting shared by data preparation, training and decoding.

Every problem with an input item (an audio file, a transcript line, a cut whose text the tokenizer
cannot spell) is described by a :class:`DataIssue`: the file, optionally the line, the problem in
plain words, and what was done about it (``"skipped"``: the item was left out; ``"kept"``: the item
was used after a fix such as resampling, and the issue is only a notice; ``"stopped"``: the run
stopped there, under the ``fail`` policy).

An :class:`ErrorCollector` gathers issues under a policy (:class:`OnError`):

* ``skip`` (default): log a warning, leave the item out, go on; every good item is still used.
* ``fail``: raise :class:`DataError` at the first item that would be skipped (notices about kept
  items never fail a run).

At the end, :meth:`ErrorCollector.summary` gives a printable summary and
:meth:`ErrorCollector.to_json` writes the full list (``prepare-mls`` writes
``OUT_DIR/prepare_errors.json``).

Example::

    errors = ErrorCollector("skip")
    try:
        samples = load_audio(path)
    except DataError as exc:
        errors.add(exc)          # or errors.report(path, "corrupt FLAC")
    print(errors.summary())
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)


class OnError(str, Enum):
    """What to do when an input item is bad."""

    SKIP = "skip"  #: leave the item out, count and list it, go on
    FAIL = "fail"  #: stop the run with a :class:`DataError`

    @classmethod
    def parse(cls, value: "OnError | str") -> "OnError":
        if isinstance(value, OnError):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"on_error must be 'skip' or 'fail', got {value!r}") from None


def format_location(path: str | Path | None, line: int | None = None) -> str:
    """``"file"`` or ``"file:line"`` (``"<unknown>"`` when there is no file)."""
    where = str(path) if path is not None else "<unknown>"
    return f"{where}:{line}" if line is not None else where


class DataError(ValueError):
    """A bad input item. ``str(exc)`` is ``"<file>[:<line>]: <problem>"`` (just the problem when
    no file is concerned)."""

    def __init__(self, path: str | Path | None, problem: str, line: int | None = None):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.line = line
        super().__init__(f"{format_location(path, line)}: {problem}" if path is not None else problem)


@dataclass(frozen=True)
class DataIssue:
    """One reported problem."""

    path: str | None
    problem: str
    line: int | None = None
    action: str = "skipped"  #: "skipped" (item left out), "kept" (item used; a notice) or "stopped" (the run stopped there)

    def __str__(self) -> str:
        return f"{format_location(self.path, self.line)}: {self.problem} [{self.action}]"


class ErrorCollector:
    """Collects :class:`DataIssue` s under an :class:`OnError` policy.

    Reporting the same (file, line, problem) twice records it once, so an item met again (an
    infinite training stream repeats cuts) is not counted twice.
    """

    def __init__(self, policy: OnError | str = OnError.SKIP, *, log: bool = True):
        self.policy = OnError.parse(policy)
        self.log = log
        self._issues: list[DataIssue] = []
        self._seen: set[tuple[str | None, int | None, str]] = set()
        self._num_skipped = 0

    # -- recording ------------------------------------------------------------------------------
    def report(
        self, path: str | Path | None, problem: str, line: int | None = None, *, action: str = "skipped"
    ) -> DataIssue:
        """Record a problem with an item.

        ``action="skipped"`` (the default) means the caller leaves the item out; under the ``fail``
        policy this raises :class:`DataError` instead of returning. ``action="kept"`` records a
        notice about an item that is still used (never raises).
        """
        if action not in ("skipped", "kept"):
            raise ValueError(f"action must be 'skipped' or 'kept', got {action!r}")
        stop = action == "skipped" and self.policy is OnError.FAIL
        issue = DataIssue(str(path) if path is not None else None, problem, line, "stopped" if stop else action)
        self._add(issue)
        if stop:
            raise DataError(path, problem, line)
        return issue

    def warn(self, path: str | Path | None, problem: str, line: int | None = None) -> DataIssue:
        """Record a notice about an item that is kept (``action="kept"``)."""
        return self.report(path, problem, line, action="kept")

    def add(self, exc: DataError, *, action: str = "skipped") -> DataIssue:
        """Record a caught :class:`DataError` (re-raised under the ``fail`` policy)."""
        return self.report(exc.path, exc.problem, exc.line, action=action)

    def extend(self, issues: Iterable[DataIssue]) -> None:
        """Merge issues gathered elsewhere (e.g. in a worker process). Does not apply the policy."""
        for issue in issues:
            self._add(issue)

    def _add(self, issue: DataIssue) -> None:
        key = (issue.path, issue.line, issue.problem)
        if key in self._seen:
            return
        self._seen.add(key)
        self._issues.append(issue)
        self._num_skipped += issue.action == "skipped"
        if self.log:
            logger.warning("%s", issue)

    # -- reading --------------------------------------------------------------------------------
    @property
    def issues(self) -> list[DataIssue]:
        return list(self._issues)

    def since(self, start: int) -> list[DataIssue]:
        """The issues recorded after the first ``start`` (in the order they were recorded): what
        is new since ``len(collector)`` was ``start``."""
        return self._issues[start:]

    @property
    def skipped(self) -> list[DataIssue]:
        return [i for i in self._issues if i.action == "skipped"]

    @property
    def kept(self) -> list[DataIssue]:
        return [i for i in self._issues if i.action == "kept"]

    @property
    def num_skipped(self) -> int:
        return self._num_skipped

    def __len__(self) -> int:
        return len(self._issues)

    def summary(self, max_items: int = 50) -> str:
        """A printable summary: counts per problem kind, then the first ``max_items`` issues."""
        if not self._issues:
            return "no input problems found"
        lines = [f"{self.num_skipped} item(s) skipped, {len(self.kept)} kept with a notice"]
        stopped = [i for i in self._issues if i.action == "stopped"]
        if stopped:
            lines[0] += f"; the run stopped at {format_location(stopped[0].path, stopped[0].line)} (--on-error fail)"
        kinds = Counter((i.action, _problem_kind(i.problem)) for i in self._issues)
        for (action, kind), n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {n:6d} x {kind} [{action}]")
        for issue in self._issues[:max_items]:
            lines.append(f"  - {issue}")
        if len(self._issues) > max_items:
            lines.append(f"  ... and {len(self._issues) - max_items} more (see the JSON report)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "policy": self.policy.value,
            "num_skipped": self.num_skipped,
            "num_kept_with_notice": len(self.kept),
            "stopped_at": next((asdict(i) for i in self._issues if i.action == "stopped"), None),
            "issues": [asdict(i) for i in self._issues],
        }

    def to_json(self, path: str | Path) -> Path:
        """Write every issue to ``path`` as JSON and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "ErrorCollector":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_dict(cls, data: dict) -> "ErrorCollector":
        """The collector :meth:`to_dict` described (not logging)."""
        out = cls(data.get("policy", "skip"), log=False)
        out.extend(DataIssue(**i) for i in data.get("issues", []))
        return out


def _problem_kind(problem: str) -> str:
    """The problem text up to its first ':' or '(' (the per-item details), for grouping."""
    for sep in (":", "("):
        if sep in problem:
            problem = problem.split(sep, 1)[0]
    return problem.strip()
