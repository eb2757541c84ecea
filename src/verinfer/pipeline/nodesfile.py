"""Reading a cluster description (nodes.toml) for `verinfer plan`: nodes, links, defaults.

Every problem becomes one ClusterError line naming the file, the entry and the field.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from verinfer.pipeline.cluster import DRIVER, Cluster, ClusterError, Link, ModelSpec, NodeSpec

FORMAT_HELP = """\
nodes.toml: what each node measured (`verinfer profile` prints its entry)
and the links between parties. Example:

  [default_link]        # optional: any pair not listed under [[link]]
  latency_ms = 20.0
  bandwidth_mbit = 100.0

  [[node]]
  name = "laptop"
  layer_ms = 12.5       # decode, batch 1: ms per token per layer
  head_ms = 30.0        # optional: final norm + LM head per token
  free_gib = 6.0        # free memory (RAM, or GPU memory)

  [[node]]
  name = "gpu-box"
  gmacs = 900.0         # instead of layer_ms: decode speed, 1e9 int8
  free_gib = 22.0       # multiply-adds per second (any model)

  [[link]]              # both ways, unless b -> a is listed too
  a = "driver"          # the gateway or client that feeds tokens in
  b = "laptop"
  latency_ms = 0.4
  bandwidth_mbit = 900.0

layer_ms is for this model; without head_ms the head's time is layer_ms
scaled by its multiply-adds. Every pair of parties (nodes and "driver")
needs a [[link]] entry or the [default_link].
"""

_NODE_FIELDS = {"name", "layer_ms", "head_ms", "embed_ms", "gmacs", "free_gib"}
_LINK_FIELDS = {"a", "b", "latency_ms", "bandwidth_mbit"}
_DEFAULT_LINK_FIELDS = {"latency_ms", "bandwidth_mbit"}


def _number(table: dict[str, Any], key: str, where: str, positive: bool = False) -> float:
    if key not in table:
        raise ClusterError(f"{where}: missing field {key}")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClusterError(f"{where}: {key} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ClusterError(f"{where}: {key} must be {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def _known_fields(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ClusterError(f"{where}: expected a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ClusterError(f"{where}: unknown field {unknown[0]} (allowed: {', '.join(sorted(allowed))})")
    return table


def _link(table: dict[str, Any], where: str) -> Link:
    return Link(_number(table, "latency_ms", where) / 1e3,
                _number(table, "bandwidth_mbit", where, positive=True) * 1e6 / 8)


def _node(table: Any, index: int, model: ModelSpec, path: Path) -> NodeSpec:
    where = f"{path}: node {index + 1}"
    table = _known_fields(table, _NODE_FIELDS, where)
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ClusterError(f"{where}: missing field name")
    where = f"{path}: node {name!r}"
    if name == DRIVER:
        raise ClusterError(f"{where}: the name {DRIVER!r} is reserved for the driver")
    free = int(_number(table, "free_gib", where) * 2**30)
    if ("layer_ms" in table) == ("gmacs" in table):
        raise ClusterError(f"{where}: give exactly one of layer_ms or gmacs")
    if "gmacs" in table:
        rate = _number(table, "gmacs", where, positive=True) * 1e9
        layer_s, head_s = model.layer_macs / rate, model.head_macs / rate
    else:
        layer_s = _number(table, "layer_ms", where) / 1e3
        head_s = layer_s * model.head_macs / model.layer_macs if model.layer_macs else 0.0
    if "head_ms" in table:
        head_s = _number(table, "head_ms", where) / 1e3
    embed_s = _number(table, "embed_ms", where) / 1e3 if "embed_ms" in table else 0.0
    return NodeSpec(name, layer_s, head_s, free, embed_s)


def parse_nodes(raw: dict[str, Any], model: ModelSpec, path: Path = Path("nodes.toml")) -> Cluster:
    """The cluster a parsed nodes.toml describes, for `model` (layer times may depend on it)."""
    unknown = sorted(set(raw) - {"node", "link", "default_link"})
    if unknown:
        raise ClusterError(f"{path}: unknown section {unknown[0]} (expected [[node]], [[link]], "
                           "[default_link])")
    entries = raw.get("node")
    if not isinstance(entries, list) or not entries:
        raise ClusterError(f"{path}: no [[node]] entries")
    nodes = tuple(_node(entry, i, model, path) for i, entry in enumerate(entries))
    names = {n.name for n in nodes} | {DRIVER}
    links: dict[tuple[str, str], Link] = {}
    link_entries = raw.get("link", [])
    if not isinstance(link_entries, list):
        raise ClusterError(f"{path}: link must be a list of [[link]] tables")
    for i, entry in enumerate(link_entries):
        where = f"{path}: link {i + 1}"
        entry = _known_fields(entry, _LINK_FIELDS, where)
        ends = (entry.get("a"), entry.get("b"))
        for key, end in zip("ab", ends):
            if not isinstance(end, str):
                raise ClusterError(f"{where}: missing field {key}")
            if end not in names:
                raise ClusterError(f"{where}: unknown node {end!r} (not a [[node]] name or "
                                   f"{DRIVER!r})")
        a, b = ends
        if a == b:
            raise ClusterError(f"{where}: a and b are both {a!r}")
        if (a, b) in links:
            raise ClusterError(f"{where}: the link {a} -> {b} is listed twice")
        links[(str(a), str(b))] = _link(entry, where)
    default = None
    if "default_link" in raw:
        where = f"{path}: [default_link]"
        default = _link(_known_fields(raw["default_link"], _DEFAULT_LINK_FIELDS, where), where)
    try:
        return Cluster(nodes, links, default).validate()
    except ClusterError as exc:
        raise ClusterError(f"{path}: {exc}") from None


def load_nodes(path: Path, model: ModelSpec) -> Cluster:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClusterError(f"{path}: no such file (see `verinfer plan --help` for the format)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterError(f"{path}: not valid TOML ({exc})") from None
    return parse_nodes(raw, model, path)
