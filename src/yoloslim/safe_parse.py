"""Parsing text files that anyone may have written (data.yaml, configs, VOC annotations), with bounds.

* YAML: ``yaml.SafeLoader`` (no ``!!python/object`` tags), plus a bound on the size of the document
  once aliases are expanded, so an alias bomb (``a: &a [x, x]``, ``b: &b [*a, *a]`` ... nine levels
  deep) is refused before anything walks it. A few ordinary aliases are fine.
* XML: expat with the document type declaration refused: no entity is ever declared, so neither
  entity expansion (billion laughs) nor external entities (``SYSTEM "file:///etc/passwd"``) can
  happen. VOC annotation files never carry a DTD.
* Both refuse files larger than :data:`MAX_TEXT_BYTES` before reading them.

Errors are :class:`UnsafeYAMLError` (a ``yaml.YAMLError``, so callers' existing handlers catch it) and
``xml.etree.ElementTree.ParseError``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from xml.parsers import expat

import yaml

MAX_TEXT_BYTES = 16 << 20  # 16 MB: far beyond any data.yaml, config or annotation file
MAX_YAML_NODES = 1_000_000  # nodes after alias expansion


class UnsafeYAMLError(yaml.YAMLError):
    """The YAML file is too large, not text, or expands beyond :data:`MAX_YAML_NODES` through aliases."""


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file safely (see the module docstring).

    Raises:
        yaml.YAMLError: not valid YAML, a tag that is not plain data, not UTF-8 text, too large, or an
            alias bomb (:class:`UnsafeYAMLError`).
        OSError: the file cannot be read.
    """
    return load_yaml(_read_text(path, UnsafeYAMLError))


def yaml_error_reason(e: Exception) -> str:
    """One line saying what is wrong with a YAML file, for a ``not valid YAML (...)`` message."""
    if isinstance(e, UnsafeYAMLError):
        return str(e)
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem:
        return f"{problem}{f' at line {mark.line + 1}' if mark is not None else ''}"
    return str(e).splitlines()[0] if str(e) else e.__class__.__name__


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the alias expansion bounded."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def parse_xml_file(path: str | Path) -> ET.Element:
    """The root element of an XML file, parsed by expat with any ``<!DOCTYPE>`` refused.

    Raises:
        xml.etree.ElementTree.ParseError: not well-formed, a DTD or entity declaration, too large.
        OSError: the file cannot be read.
    """
    data = _read_bytes(path, ET.ParseError)
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse(*_: Any) -> None:
        raise ET.ParseError("a DOCTYPE or entity declaration (refused: annotation files need none)")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = lambda tag: builder.end(tag)
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise ET.ParseError(str(e)) from None
    return builder.close()


def _count_nodes(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded; raises past :data:`MAX_YAML_NODES`."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:  # a recursive alias (&a [*a]): infinite once expanded
        raise UnsafeYAMLError("a recursive YAML alias (refused)")
    active.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_count_nodes(c, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_count_nodes(k, memo, active) + _count_nodes(v, memo, active) for k, v in node.value)
    active.discard(key)
    if n > MAX_YAML_NODES:
        raise UnsafeYAMLError(f"YAML aliases expand to more than {MAX_YAML_NODES:,} nodes (an alias bomb?)")
    memo[key] = n
    return n


def _read_bytes(path: str | Path, error: type[Exception]) -> bytes:
    path = Path(path)
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise error(f"larger than {MAX_TEXT_BYTES >> 20} MB (refused)")
    return path.read_bytes()


def _read_text(path: str | Path, error: type[Exception]) -> str:
    try:
        return _read_bytes(path, error).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error("not UTF-8 text") from None
