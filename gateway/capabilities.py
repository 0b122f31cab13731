"""The capability table published in the README, rendered from the adapters' declarations."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.registry import AdapterClass, adapters


def markdown_table(registry: Mapping[str, AdapterClass] | None = None) -> str:
    reg = adapters() if registry is None else registry
    rows = [
        "| provider | unassign | modes | contact kinds | assignee kinds | default base_url |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ptype in sorted(reg):
        cls = reg[ptype]
        c = cls.capabilities
        rows.append(
            f"| {ptype} | {'yes' if c.unassign else 'no'} | {', '.join(c.modes)} | "
            f"{', '.join(c.contact_kinds)} | {', '.join(c.assignee_kinds)} | "
            f"`{cls.defaults.base_url}` |")
    rows.append("")
    for ptype in sorted(reg):
        for note in reg[ptype].capabilities.notes:
            rows.append(f"- {ptype}: {note}")
    return "\n".join(rows) + "\n"
