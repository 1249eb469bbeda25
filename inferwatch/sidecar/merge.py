"""Which of the upstream's families join the sidecar's in the one scrape of the pod.

Families both sides expose (an application instrumented with inferwatch behind the sidecar:
``model_inference_total{source="app"}`` next to ``{source="sidecar"}``) are merged into one
family, ours first. A series both expose, or an upstream family whose name or samples collide
with one of ours of another type, is left out in favour of ours. The upstream can never add to
the sidecar's own state (``inferwatch_upstream_up``, ``inferwatch_build_info``, the scrape-error
counter) nor pass a series off as the sidecar's with ``source="sidecar"``.
"""

from __future__ import annotations

from inferwatch import schema
from inferwatch.exposition.families import Family

_OWN_NAMES = frozenset(
    name
    for family in schema.OWN_FAMILIES
    for name in (family.name.removesuffix("_total"), family.name.removesuffix("_info"))
)
_SIDECAR_LABEL = ("source", schema.SOURCE_SIDECAR)


def merge_families(ours: list[Family], theirs: list[Family]) -> tuple[list[Family], list[str]]:
    """Ours followed by theirs, one family per name; returns (families, names left out)."""
    by_name = {f.name: f for f in ours}
    claimed: set[str] = set()
    for family in ours:
        claimed |= family.sample_names()
        claimed.add(family.name)
    merged = list(ours)
    left_out: list[str] = []
    for family in theirs:
        if family.name in _OWN_NAMES:  # the sidecar's own state: nobody else reports it
            left_out.append(family.name)
            continue
        # A series labelled as the sidecar's would pass for it on every dashboard and alert.
        family.samples = [s for s in family.samples if _SIDECAR_LABEL not in s.labels]
        mine = by_name.get(family.name)
        if mine is not None and mine.type == family.type and not family.legacy_counter:
            seen = {(s.name, frozenset(s.labels)) for s in mine.samples}
            mine.samples.extend(
                s for s in family.samples if (s.name, frozenset(s.labels)) not in seen
            )
            continue
        names = {s.name for s in family.samples}
        names.add(family.name)
        if mine is not None or not names.isdisjoint(claimed):
            left_out.append(family.name)
            continue
        merged.append(family)
        claimed |= names
    return merged, left_out
