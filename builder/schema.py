"""A small grammar for YAML documents: each node parses a located value and describes itself
as JSON Schema, so the loader and the shipped schema come from one table and cannot drift.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from builder.errors import InputError


@dataclass(frozen=True)
class Located:
    """A YAML value with where it came from: the document path and line, for error messages."""

    value: Any  # dict[str, Located] | list[Located] | str | int | float | bool | None
    path: str
    file: str
    line: int

    def error(self, message: str) -> InputError:
        return InputError(f"{self.file}:{self.line}: {self.path}: {message}")

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key


def parse_option(node: Node, value: Any, option: str) -> Any:
    """A command-line value checked by the same grammar node as the site file's key; an
    error reads `OPTION: what is wrong`."""
    try:
        return node.parse(Located(value, option, "", 0))
    except InputError as exc:
        raise InputError(str(exc).removeprefix(":0: ")) from None


def type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string"


class Node:
    description: str = ""

    def parse(self, loc: Located) -> Any:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError


_UNSEEN = object()
SEEN_LIMIT = 1 << 17  # values remembered per Str node (a 100,000-host fleet's addresses)


@dataclass
class Str(Node):
    """A string restricted to a pattern (always anchored), optionally converted."""

    pattern: str
    description: str = ""
    what: str = ""  # the kind of value, for the error message ("a MAC address")
    convert: Callable[[str], Any] | None = None
    max_length: int = 255

    def __post_init__(self) -> None:
        # Compiled at the first value: most of the grammar's 66 patterns (bonds, VLANs, PXE)
        # are never needed by a site, and compiling them all cost ~3 ms of every command.
        self._match: Callable[[str], object] = self._compile_and_match
        # Valid values already seen, with what they convert to. A fleet repeats the same
        # strings (gateways, DNS servers, key names) thousands of times, and what convert
        # returns is immutable (an ipaddress object, a str), so one result serves every
        # occurrence. Bounded, since the nodes live as long as the process.
        self._seen: dict[str, Any] = {}

    def _compile_and_match(self, value: str) -> object:
        self._match = re.compile(self.pattern).fullmatch
        return self._match(value)

    def parse(self, loc: Located) -> Any:
        value = loc.value
        if not isinstance(value, str):
            raise loc.error(f"expected {self.what or 'a string'}, got {type_name(value)}")
        seen = self._seen.get(value, _UNSEEN)
        if seen is not _UNSEEN:
            return seen
        if len(value) > self.max_length or not self._match(value):
            raise loc.error(f"{value!r} is not {self.what or 'valid here'}")
        result = value
        if self.convert is not None:
            try:
                result = self.convert(value)
            except ValueError as exc:
                raise loc.error(f"{value!r} is not {self.what}: {exc}") from None
        if len(self._seen) >= SEEN_LIMIT:
            self._seen.clear()
        self._seen[value] = result
        return result

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "pattern": f"^(?:{self.pattern})$",
            "maxLength": self.max_length,
            "description": self.description,
        }


@dataclass
class Enum(Node):
    choices: tuple[str, ...]
    description: str = ""

    def parse(self, loc: Located) -> Any:
        if not isinstance(loc.value, str) or loc.value not in self.choices:
            shown = loc.value if isinstance(loc.value, str) else type_name(loc.value)
            raise loc.error(f"{shown!r} is not one of {', '.join(self.choices)}")
        return loc.value

    def json_schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices), "description": self.description}


@dataclass
class Bool(Node):
    description: str = ""

    def parse(self, loc: Located) -> Any:
        if not isinstance(loc.value, bool):
            raise loc.error(f"expected true or false, got {type_name(loc.value)}")
        return loc.value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean", "description": self.description}


@dataclass
class Int(Node):
    minimum: int
    maximum: int
    description: str = ""

    def parse(self, loc: Located) -> Any:
        value = loc.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise loc.error(f"expected a whole number, got {type_name(value)}")
        if not self.minimum <= value <= self.maximum:
            raise loc.error(f"{value} is not between {self.minimum} and {self.maximum}")
        return value

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "integer",
            "minimum": self.minimum,
            "maximum": self.maximum,
            "description": self.description,
        }


@dataclass
class List(Node):
    item: Node
    description: str = ""
    min_items: int = 0
    max_items: int = 1000

    def parse(self, loc: Located) -> Any:
        if not isinstance(loc.value, list):
            raise loc.error(f"expected a list, got {type_name(loc.value)}")
        if not self.min_items <= len(loc.value) <= self.max_items:
            raise loc.error(
                f"needs {self.min_items} to {self.max_items} items, has {len(loc.value)}"
            )
        return tuple(self.item.parse(item) for item in loc.value)

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": self.item.json_schema(),
            "minItems": self.min_items,
            "maxItems": self.max_items,
            "description": self.description,
        }


@dataclass
class Dict(Node):
    """A mapping from names the user chooses (a pattern) to values of one node: devices keyed
    by name merge key by key (a host overrides one device of the defaults), where a list
    would be replaced whole."""

    key: Str
    item: Node
    description: str = ""
    max_items: int = 64

    def parse(self, loc: Located) -> Any:
        if not isinstance(loc.value, dict):
            raise loc.error(f"expected a mapping, got {type_name(loc.value)}")
        if len(loc.value) > self.max_items:
            raise loc.error(f"has {len(loc.value)} entries, at most {self.max_items}")
        parsed = {}
        for key, item in loc.value.items():
            self.key.parse(Located(key, item.path, item.file, item.line))
            parsed[key] = self.item.parse(item)
        return parsed

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"pattern": f"^(?:{self.key.pattern})$",
                              "maxLength": self.key.max_length},
            "additionalProperties": self.item.json_schema(),
            "maxProperties": self.max_items,
            "description": self.description,
        }


@dataclass
class Field:
    node: Node
    default: Any = None
    required: bool = False


@dataclass
class Map(Node):
    """A mapping with known keys; unknown keys are errors (a typo must not pass silently)."""

    fields: Mapping[str, Field]
    description: str = ""
    build: Callable[..., Any] | None = None  # called with the parsed fields as keywords
    extra_required: tuple[str, ...] = field(default=())

    def parse(self, loc: Located) -> Any:
        if not isinstance(loc.value, dict):
            raise loc.error(f"expected a mapping, got {type_name(loc.value)}")
        for key, item in loc.value.items():
            if key not in self.fields:
                raise item.error(f"unknown key (known: {', '.join(sorted(self.fields))})")
        parsed: dict[str, Any] = {}
        for key, spec in self.fields.items():
            if key in loc.value:
                parsed[key] = spec.node.parse(loc.value[key])
            elif spec.required:
                raise loc.error(f"missing required key {key!r}")
            else:
                parsed[key] = spec.default
        return self.build(**parsed) if self.build else parsed

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {key: spec.node.json_schema() for key, spec in self.fields.items()},
            "description": self.description,
        }
        for key, spec in self.fields.items():
            if spec.default is not None and not isinstance(spec.default, tuple):
                schema["properties"][key]["default"] = spec.default
        required = [key for key, spec in self.fields.items() if spec.required]
        if required:
            schema["required"] = required
        return schema


# Converters shared by the site grammar.


def ipv4_interface(text: str) -> ipaddress.IPv4Interface:
    fast = _canonical_interface(text)
    if fast is not None:
        return fast
    iface = ipaddress.IPv4Interface(text)
    if iface.network.prefixlen == 32 or iface.ip in (
        iface.network.network_address,
        iface.network.broadcast_address,
    ) and iface.network.prefixlen < 31:
        raise ValueError(f"{iface.ip} is the network or broadcast address of {iface.network}")
    return iface


def _canonical_interface(text: str) -> ipaddress.IPv4Interface | None:
    """`text` as an interface, when it is written the way ipaddress writes it and is a host
    address (neither the network's nor its broadcast): its network shared with the other
    interfaces in it. Anything else (None) goes through ipaddress, for its checks and
    messages. A fleet's addresses are all different, and ipaddress took 0.2 s for 10,000."""
    if not text.isascii():
        return None
    address, _, prefix = text.partition("/")
    octets = address.split(".")
    if not _REBUILD_WORKS or len(octets) != 4 or not prefix.isdigit() or str(
            int(prefix)) != prefix or not 0 < int(prefix) < 31:
        return None
    ip = 0
    for octet in octets:
        if not octet.isdigit() or str(int(octet)) != octet or int(octet) > 255:
            return None
        ip = ip << 8 | int(octet)
    prefixlen = int(prefix)
    host_bits = (1 << (32 - prefixlen)) - 1
    if ip & host_bits in (0, host_bits):
        return None  # the network or broadcast address: ipaddress says which
    return interface_from_ints(ip, prefixlen)


@functools.lru_cache(maxsize=4096)
def _network(network: int, prefixlen: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((network, prefixlen))


def interface_from_ints(ip: int, prefixlen: int) -> ipaddress.IPv4Interface:
    """IPv4Interface((ip, prefixlen)), ~20x faster, its network shared with the others in it.
    It sets the attributes IPv4Interface.__init__ sets (checked once, at import, by
    _REBUILD_WORKS; where that fails, the callers use ipaddress)."""
    network = _network(ip & (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF, prefixlen)
    interface = ipaddress.IPv4Interface.__new__(ipaddress.IPv4Interface)
    interface._ip = ip  # type: ignore[attr-defined]
    interface.network = network
    interface.netmask = network.netmask
    interface._prefixlen = prefixlen  # type: ignore[attr-defined]
    return interface


def _rebuild_works() -> bool:
    made = ipaddress.IPv4Interface("192.0.2.5/24")
    try:
        rebuilt = interface_from_ints(int(made.ip), 24)
    except Exception:  # another Python's ipaddress
        return False
    return (rebuilt == made and vars(rebuilt) == vars(made) and hash(rebuilt) == hash(made)
            and str(rebuilt) == str(made) and rebuilt.network == made.network)


_REBUILD_WORKS = _rebuild_works()


def ipv4_address(text: str) -> ipaddress.IPv4Address:
    address = ipaddress.IPv4Address(text)
    if address.is_unspecified or address.is_multicast:
        raise ValueError("not a host address")
    return address


def mac_address(text: str) -> str:
    mac = text.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise ValueError("a multicast MAC cannot belong to a NIC")
    return mac


def hostname(text: str) -> str:
    if len(text) > 253:
        raise ValueError("longer than 253 characters")
    for label in text.split("."):
        if not 1 <= len(label) <= 63:
            raise ValueError(f"label {label!r} must have 1 to 63 characters")
    return text.lower()
