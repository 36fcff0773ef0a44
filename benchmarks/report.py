"""What a benchmark scenario returns, and how ``run_all.py`` turns it into RESULTS.md.

A :class:`Section` is a titled table (one row per contender or setting) plus the targets it
checks, each printed as met or not met with the figures behind the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """One stated target and whether this run met it."""

    text: str
    met: bool
    detail: str

    def line(self) -> str:
        """A markdown list line."""
        return f"- {'MET' if self.met else 'NOT MET'}: {self.text} ({self.detail})"


@dataclass
class Section:
    """One scenario's results."""

    title: str
    setup: str
    rows: list[dict[str, object]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The section as markdown: setup, table, targets, notes."""
        lines = [f"## {self.title}", "", self.setup, ""]
        if self.rows:
            columns = list(dict.fromkeys(k for row in self.rows for k in row))
            lines.append("| " + " | ".join(columns) + " |")
            lines.append("|" + "---|" * len(columns))
            for row in self.rows:
                lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
            lines.append("")
        lines.extend(t.line() for t in self.targets)
        if self.targets:
            lines.append("")
        lines.extend(self.notes)
        if self.notes:
            lines.append("")
        return "\n".join(lines)
