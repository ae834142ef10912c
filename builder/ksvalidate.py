"""Validate kickstarts with pykickstart's RHEL7 grammar (warnings are errors), then with
builder/el7grammar.py, fast enough for a fleet: 10,000 hosts are validated twice (ks/ and the
PXE kickstarts), so a kickstart must cost a fraction of a millisecond, not the ~20 ms of a new
handler or the ~1.5 ms of a plain reused one.

pykickstart stays the parser: every line goes through its state machine, its dispatcher, its
command and section objects, in its order. What is saved is work whose result is a pure
function of its input and recurs across a fleet, and nothing that a refused kickstart could
leave behind:
- one handler for every kickstart; what a kickstart changed (the commands it dispatched, the
  sections, the handler's lists) is put back to the state it was built in (_Pristine);
- shlex.split of command lines and section headers (a third of a parse) is memoized
  (_MemoShlex);
- argparse over a command's or a section header's arguments is memoized when it returned
  without a warning (_MemoOptions): the namespace depends on the arguments alone, and on
  the value of a `--name=value` whose option stores its value as given only by that value
  (_verbatim_options): such values are left out of the key and put in the namespace after,
  so a host's own network lines (--ip, --hostname) find the other hosts' parse;
- a non-data command's parse from its state as built is memoized by its line and line
  number (_ParseMemo): the dispatcher runs for real, the parse's effect is put back;
- these two memos keep what recurs across kickstarts (from an input's second time on); inside
  Validator.together() (a host's ks/ and PXE kickstarts) they also keep, until it ends, what
  the first of the group parsed (_Together): the host's own network lines among it;
- the ordinary lines of a section body are handed to the section in one step; from the first
  line that could end or change the section on, pykickstart's own _readSection reads
  (_Parser).
tests/test_ksvalidate.py runs a corpus of accepted and refused kickstarts, in several orders,
through this and through a brand-new plain pykickstart handler, and compares verdicts,
messages and the handlers' whole state.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shlex
import warnings
from argparse import Namespace, _StoreAction
from collections.abc import Callable, Iterator
from typing import Any

from builder import ksload

ksload.install()  # before pykickstart: it would import requests, for URLs we never load

from pykickstart import parser as ksparser  # noqa: E402
from pykickstart.errors import KickstartError, KickstartWarning  # noqa: E402
from pykickstart.options import KSOptionParser  # noqa: E402
from pykickstart.parser import KickstartParser, Packages, PutBackIterator  # noqa: E402
from pykickstart.sections import ScriptSection  # noqa: E402
from pykickstart.version import F8, RHEL7, returnClassForVersion  # noqa: E402

from builder import el7grammar  # noqa: E402
from builder.errors import KsbuildError  # noqa: E402

# Past this many remembered inputs a memo starts again: host-specific lines (network, url)
# never recur, and a worker must not grow with the fleet.
MEMO_LIMIT = 4096


# shlex.split's whitespace (shlex.whitespace): in POSIX mode, a line with no quote, no
# backslash and (when comments count) no # is split at these and nowhere else.
_SHLEX_BLANKS = re.compile("[ \t\r\n]+")


@functools.lru_cache(maxsize=MEMO_LIMIT)
def _split_words(line: str, comments: bool, posix: bool) -> tuple[str, ...]:
    """shlex.split's words, remembered: the same lines (a command, a section header, %end)
    come in every kickstart, and a host's own in each of its kickstarts (recently used: an
    LRU keeps them while those of other hosts go). A line shlex has nothing to interpret
    in (most) is split at shlex's whitespace directly; tests/test_ksvalidate.py compares the
    two on random text."""
    if posix and '"' not in line and "'" not in line and "\\" not in line \
            and not (comments and "#" in line):
        return tuple(word for word in _SHLEX_BLANKS.split(line) if word)
    return tuple(shlex.split(line, comments=comments, posix=posix))


class _MemoShlex:
    """Stands in for the shlex module inside pykickstart.parser while a Validator parses
    (pykickstart looks `shlex.split` up at each call): the same words as shlex.split
    (_split_words), in a new list each time; an unbalanced quote raises the same ValueError
    (errors are not cached)."""

    @staticmethod
    def split(s: str, comments: bool = False, posix: bool = True) -> list[str]:
        return list(_split_words(s, comments, posix))


_SCALARS = (str, int, float, bool, type(None))


def _plain(value: object) -> bool:
    """Can a copy of this value stand for it: scalars; lists, tuples and dicts of plain
    values (dicts keyed by scalars); sets of scalars."""
    if isinstance(value, _SCALARS):
        return True
    if type(value) in (list, tuple):
        return all(_plain(item) for item in value)  # type: ignore[attr-defined]
    if type(value) is dict:
        return all(isinstance(key, _SCALARS) and _plain(item)
                   for key, item in value.items())
    if type(value) in (set, frozenset):
        return all(isinstance(item, _SCALARS) for item in value)  # type: ignore[attr-defined]
    return False


def _immutable(value: object) -> bool:
    if type(value) in (tuple, frozenset):
        return all(_immutable(item) for item in value)  # type: ignore[attr-defined]
    return isinstance(value, _SCALARS)


def _thawed(value: Any) -> Any:
    """A copy of a _plain value that shares no mutable container with it."""
    if type(value) is list:
        return [_thawed(item) for item in value]
    if type(value) is tuple:
        return tuple(_thawed(item) for item in value)
    if type(value) is dict:
        return {key: _thawed(item) for key, item in value.items()}
    if type(value) is set:
        return set(value)
    return value


def _same(one: Any, other: Any) -> bool:
    """Equal plain values of the same types throughout (so 1 and True differ)."""
    if type(one) is not type(other):
        return False
    if type(one) in (list, tuple):
        return len(one) == len(other) and all(map(_same, one, other))
    if type(one) is dict:
        return one.keys() == other.keys() and all(_same(one[key], other[key]) for key in one)
    if type(one) in (set, frozenset):
        return {(type(item), item) for item in one} == {(type(item), item) for item in other}
    return bool(one == other)


class _ShownWarnings:
    """Counts the warnings shown while a Validator parses (the ones that are not errors): a
    parse that showed one is not remembered, so a memo hit never hides a warning."""

    def __init__(self) -> None:
        self.count = 0

    def counting(self, show: Callable[..., None]) -> Callable[..., None]:
        def shown(*args: Any, **kwargs: Any) -> None:
            self.count += 1
            show(*args, **kwargs)

        return shown


class _Recurring:
    """The inputs seen once, so that a result is remembered from an input's second time on:
    a host's own lines (its network, its name) come once in a build, and remembering each
    would cost more than parsing it."""

    def __init__(self) -> None:
        self.once: set[Any] = set()

    def again(self, key: Any) -> bool:
        if key in self.once:
            return True
        if len(self.once) >= MEMO_LIMIT:
            self.once.clear()
        self.once.add(key)
        return False


class _Together:
    """What the kickstarts validated together (Validator.together: a host's ks/ and PXE
    kickstarts, the same text but for a few lines) parse, remembered from its first time on
    while they are, by (memo, key) as that memo would store it, and forgotten after: a host's
    own lines (its network) recur in its other kickstarts but in no other host's."""

    def __init__(self) -> None:
        self.active = False
        self.memo: dict[tuple[object, Any], Any] = {}

    def get(self, memo: object, key: Any) -> Any:
        return self.memo.get((memo, key)) if self.memo else None


class _MemoOptions:
    """A KSOptionParser whose parse_args/parse_known_args results are remembered by the
    argument list. argparse's namespace is a function of the arguments and of the parser,
    which is built once and never changed after; a parse that raised or showed a warning is
    not remembered, and every other call reaches the parser itself."""

    def __init__(self, options: KSOptionParser, shown: _ShownWarnings,
                 together: _Together | None = None) -> None:
        self.options = options
        self.shown = shown
        self.together = together or _Together()
        # (parse_known_args?, the arguments) -> the namespace's values, the names of those
        # that hold lists (copied for each caller), the arguments left over
        self.recurring = _Recurring()
        self.memo: dict[tuple[bool, tuple[str | tuple[str], ...]],
                        tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]] = {}
        self.verbatim = _verbatim_options(options)
        # _shape, remembered (recently used): the same argument lists come in every
        # kickstart (a section header's) or in each of a host's (its network lines).
        self.shaped = functools.lru_cache(maxsize=MEMO_LIMIT)(self._shape)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.options, name)

    def parse_args(self, args: Any = None, **kwargs: Any) -> Namespace:
        return self._parse(False, args, kwargs)  # type: ignore[no-any-return]

    def parse_known_args(self, args: Any = None, **kwargs: Any) -> tuple[Namespace, list[str]]:
        return self._parse(True, args, kwargs)  # type: ignore[no-any-return]

    def _parse(self, known: bool, args: Any, kwargs: dict[str, Any]) -> Any:
        real = self.options.parse_known_args if known else self.options.parse_args
        # pykickstart passes shlex's words: a list of str.
        if type(args) is not list or not kwargs.keys() <= {"lineno"}:
            return real(args, **kwargs)
        key, given = self.shaped(known, tuple(args))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.together.get(self, key)
        if hit is not None:
            if "lineno" in kwargs:  # as the real parse leaves the parser
                self.options.lineno = kwargs["lineno"]
            values, lists, extra = hit
            namespace = Namespace()
            state = vars(namespace)
            state.update(values)
            for name in lists:
                state[name] = _thawed(state[name])
            for name, value in given:
                state[name] = value
            return (namespace, list(extra)) if known else namespace
        shown = self.shown.count
        result = real(args, **kwargs)
        recurring = self.recurring.again(key)
        if not recurring and not self.together.active:
            return result
        namespace, extra = result if known else (result, [])
        values = vars(namespace)
        if self.shown.count == shown and type(namespace) is Namespace and _plain(extra) \
                and all(_plain(value) for value in values.values()) \
                and all(values.get(name) == value for name, value in given):
            lists = tuple(name for name, value in values.items() if not _immutable(value))
            found = ({name: _thawed(value) for name, value in values.items()}, lists,
                     tuple(extra))
            if not recurring:
                self.together.memo[self, key] = found
            else:
                if len(self.memo) >= MEMO_LIMIT:
                    self.memo.clear()
                self.memo[key] = found
        return result

    def _shape(self, known: bool, args: tuple[str, ...]
               ) -> tuple[tuple[bool, tuple[str | tuple[str], ...]], tuple[tuple[str, str], ...]]:
        """The memo's key for these arguments: each `--name=value` of a _verbatim_options
        option as (`--name`,), and those values (namespace attribute, value), in order. A
        value that starts with - (-- among them, which argparse drops) stays in the key, and
        nothing is left out where a -- argument makes what follows positional."""
        verbatim = self.verbatim
        if not verbatim or "--" in args:
            return (known, tuple(args)), ()
        shape: list[str | tuple[str]] = []
        given = []
        for arg in args:
            name, _, value = arg.partition("=")
            dest = verbatim.get(name) if value else None
            if dest is None or value[0] == "-":
                shape.append(arg)
            else:
                shape.append((name,))
                given.append((dest, value))
        return (known, tuple(shape)), tuple(given)


def _verbatim_options(options: KSOptionParser) -> dict[str, str]:
    """Option string -> namespace attribute, for the options that argparse, given
    `--name=value`, stores as the value itself and nothing else: a plain store (no type,
    choices, nargs or default), the only option of its attribute, not deprecated, in a
    parser whose option strings hold no = (so `--name=value` is always that option with
    that value) and that reads no argument files. Such an argument's parse is the same
    whatever its value (but one that starts with -); a parse is remembered only if each
    value left out of its key is its attribute's value after it (_MemoOptions._parse)."""
    if options.fromfile_prefix_chars or options.prefix_chars != "-" \
            or any("=" in string for string in options._option_string_actions):
        return {}
    dests: dict[str, int] = {}
    for action in options._actions:
        dests[action.dest] = dests.get(action.dest, 0) + 1
    return {string: action.dest for action in options._actions
            if type(action) is _StoreAction and action.type is None and action.nargs is None
            and action.choices is None and action.default is None and dests[action.dest] == 1
            and not getattr(action, "deprecated", False)
            for string in action.option_strings if string.startswith("--")}


class _OnceOptions:
    """Stands in for a section's _getParser(), which builds a new argparse parser (~1 ms) on
    every section header: the parser is built on first use, then the same one is returned."""

    def __init__(self, build: Callable[[], KSOptionParser], shown: _ShownWarnings,
                 together: _Together) -> None:
        self.build = build
        self.shown = shown
        self.together = together
        self.options: _MemoOptions | None = None

    def __call__(self) -> _MemoOptions:
        if self.options is None:
            self.options = _MemoOptions(self.build(), self.shown, self.together)
        return self.options


def _copied(value: Any) -> Any:
    """A copy of a container of an object's state (nested lists and dicts included), so a
    kickstart that fills it in place cannot change the saved state; other values as they
    are (parsers, the handler, classes)."""
    if type(value) is list:
        return [_copied(item) for item in value]
    if type(value) is dict:
        return {key: _copied(item) for key, item in value.items()}
    if type(value) is set:
        return set(value)
    return value


class _Pristine:
    """An object's attributes as built, put back (in their order) before a kickstart that may
    find them changed."""

    def __init__(self, obj: object) -> None:
        self.state = vars(obj)
        self.saved = {key: _copied(value) for key, value in self.state.items()}
        # A container of plain items is copied by its copy(), one holding containers deeply.
        self.flat: list[str] = []
        self.nested: list[str] = []
        for key, value in self.saved.items():
            if type(value) in (list, dict, set):
                items = value.values() if type(value) is dict else value
                nested = any(type(item) in (list, dict, set) for item in items)
                (self.nested if nested else self.flat).append(key)

    def restore(self) -> None:
        """Called for the objects a kickstart may have changed: the commands dispatched and
        the sections opened (_Parser records both; nothing else changes them)."""
        state, saved = self.state, self.saved
        state.clear()
        state.update(saved)
        for key in self.flat:
            state[key] = saved[key].copy()
        for key in self.nested:
            state[key] = _copied(saved[key])


# What pykickstart's dispatcher sets on a command before it calls the command's parse.
_DISPATCHER_SETS = ("currentCmd", "currentLine", "lineno", "seen")
# What a command holds that its parse may use but never changes: the handler (only data
# commands, which are never remembered, read it) and the argparse parser.
_REFERENCES = ("handler", "op")



class _ParseMemo:
    """The effect of a command's parse on its attributes, remembered by (command name, line,
    line number): the dispatcher still runs for real (seen, the conflicting-commands check);
    only the command's parse is replaced by putting that effect back.

    A command is remembered only where its parse depends on nothing else: not a data command
    (network, part, repo...: they append to lists and compare with earlier lines), not a
    proxy (method), only plain values and the handler and parser held, and only from its
    state as built (its first line in this kickstart; `seen` is set by every dispatch). Its
    parse then reads the arguments, the line, the command's name and line number, and that
    state: all in the key or fixed. tests/test_ksvalidate.py checks that no such command's
    code reads the handler. A parse that raised, showed a warning, returned another object
    or left anything but plain values is not remembered."""

    def __init__(self, commands: dict[str, _Pristine], handler: Any,
                 shown: _ShownWarnings, together: _Together) -> None:
        self.commands = commands
        self.handler = handler
        self.shown = shown
        self.together = together
        self.eligible = {name for name, pristine in commands.items()
                         if _rememberable(handler.commands[name], pristine.saved)}
        # -> a stand-in for the parse that puts back what it set (_putting_back)
        self.memo: dict[tuple[str, str, int], Callable[[list[str]], Any]] = {}
        self.recurring = _Recurring()

    def dispatch(self, dispatch: Callable[[int, list[str]], Any], name: str, line: str,
                 lineno: int, args: list[str]) -> Any:
        command = self.handler.commands[name]
        state = vars(command)
        key = (name, line, lineno)
        found = self.memo.get(key)
        if found is None:
            found = self.together.get(self, key)
        if found is not None:
            state["parse"] = found  # found before the class's parse, for this line only
            try:
                return dispatch(lineno, args)
            finally:
                state.pop("parse", None)
        shown = self.shown.count
        result = dispatch(lineno, args)
        if result is not command or self.shown.count != shown:
            return result
        recurring = self.recurring.again(key)
        if recurring or self.together.active:
            before = dict(self.commands[name].saved, currentCmd=name, currentLine=line,
                          lineno=lineno, seen=True)
            effect = _effect(before, state)
            if effect is not None:
                kept = _putting_back(command, effect)
            if effect is not None and not recurring:
                self.together.memo[self, key] = kept
            elif effect is not None:
                if len(self.memo) >= MEMO_LIMIT:
                    self.memo.clear()
                self.memo[key] = kept
        return result


def _putting_back(command: Any, effect: dict[str, Any]) -> Callable[[list[str]], Any]:
    """A stand-in for the command's parse that puts back the effect a parse of the line had
    (made once, when it is remembered, not at each hit)."""
    state = vars(command)
    # What it copies at each call (the rest is immutable: put back as it is).
    mutable = tuple((attribute, value) for attribute, value in effect.items()
                    if not _immutable(value))

    def remembered(_: list[str]) -> Any:
        state.update(effect)
        for attribute, value in mutable:
            state[attribute] = _thawed(value)
        return command

    return remembered


def _rememberable(command: Any, saved: dict[str, Any]) -> bool:
    proxy = any("__getattr__" in vars(kind) or "__setattr__" in vars(kind)
                for kind in type(command).__mro__[:-1])
    return command.dataList() is None and not proxy \
        and all(_plain(value) for key, value in saved.items() if key not in _REFERENCES)


def _effect(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes a parse changed (copies), or None if it removed one or left a value
    that is not plain."""
    if not before.keys() <= after.keys():
        return None
    effect = {}
    for key, value in after.items():
        if key in before and (value is before[key] or _same(value, before[key])):
            continue
        if not _plain(value):
            return None
        effect[key] = _thawed(value)
    return effect


class _Text(PutBackIterator):  # type: ignore[misc]
    """pykickstart's PutBackIterator over a text of el7grammar.newline_lines: its lines as
    str.splitlines(True) gives them, then "" (the end of the text), each cut from the text
    when it is read, so that _Parser._readSection can skip a section's body (most of the
    text) with str.find instead of splitting it into lines and looking at each."""

    _buf: str | None

    def __init__(self, text: str) -> None:
        super().__init__(())
        self.text = text
        self.at = 0  # where the next line starts (past the end once "" was read)

    def __next__(self) -> str:  # (PutBackIterator's calls next(): one call less a line)
        if self._buf:
            line: str = self._buf
            self._buf = None
            return line
        text, at = self.text, self.at
        if at >= len(text):
            if at > len(text):
                raise StopIteration
            self.at = at + 1
            return ""
        self.at = text.find("\n", at) + 1 or len(text)
        return text[at:self.at]

    next = __next__


def _recording(opened: set[str], name: str, header: Callable[[int, list[str]], Any]
               ) -> Callable[[int, list[str]], Any]:
    """Stands in for a section's handleHeader, the first thing that may change a section
    in a kickstart: its name is recorded (even if the header is refused), then the header
    handled."""

    def handle_header(lineno: int, args: list[str]) -> Any:
        opened.add(name)
        return header(lineno, args)

    return handle_header


class _Parser(KickstartParser):  # type: ignore[misc]
    """pykickstart's parser, recording the commands it dispatches and the sections it opens
    (so exactly those are put back) and reading the ordinary lines of a section body in one
    step."""

    def __init__(self, handler: Any) -> None:
        super().__init__(handler, followIncludes=False)
        self.dispatched: set[str] = set()
        self.opened: set[str] = set()
        for name, section in self._sections.items():
            section.handleHeader = _recording(self.opened, name, section.handleHeader)
        self.parses: _ParseMemo | None = None
        # pykickstart's handleCommand, bound once (super() at each of ~18 lines a kickstart)
        self.dispatch = super().handleCommand

    def handleCommand(self, lineno: int, args: list[str]) -> Any:  # noqa: N802 (its name)
        name = args[0]
        self.dispatched.add(name)
        if self.parses is None or name not in self.parses.eligible \
                or self.handler.commands[name].seen:  # not as built: parse for real
            return self.dispatch(lineno, args)
        return self.parses.dispatch(self.dispatch, name, self._line, lineno, args)

    def _validState(self, st: str) -> bool:  # noqa: N802 (its name)
        # As pykickstart's, without the list of the sections' names it made at each call.
        return st in self._sections

    def readKickstartFromString(self, s: str, reset: bool = True) -> None:  # noqa: N802
        # As pykickstart's (its lines, then "" as the end of the text), read from the text.
        if not el7grammar.newline_lines(s):
            super().readKickstartFromString(s, reset)
            return
        if reset:
            self._reset()
        self._stateMachine(_Text(s))

    def _readSection(self, lineIter: Any, lineno: int) -> int:  # noqa: N803 (its name)
        """Hand the section the lines before the first one pykickstart's _readSection treats
        specially (the end of the text, or a line starting with % after blanks: %end, a
        section header, %include, or a body line it must look at), then let that method
        read on from there, as it would have. A script is handed them as one string: it
        only ever joins its lines ("".join, and " ".join to see if all are blank)."""
        if type(lineIter) is not _Text or lineIter._buf or self._includeDepth \
                or self.version < F8:
            return int(super()._readSection(lineIter, lineno))
        section = self._sections[self._state]
        text, start = lineIter.text, lineIter.at
        end = el7grammar.line_starting(text, start, "%")
        if end < 0:
            end = len(text)
        body = text[start:end]
        if section.allLines and type(section).handleLine is ScriptSection.handleLine:
            if body:
                section._script["body"].append(body)
        else:
            for line in body.splitlines(True):
                if section.allLines or not self._isBlankOrComment(line):
                    section.handleLine(line)
        lineIter.at = end
        lines = body.count("\n") + (body[-1:] not in ("", "\n"))  # the last may have no \n
        return int(super()._readSection(lineIter, lineno + lines))


def _rhel7_handler() -> Any:
    """makeVersion(RHEL7), less the import of pykickstart's every other handler (~15 ms):
    without a command map, a handler takes its own from pykickstart.handlers.control, which
    imports all of them (fc3 to rhel10) to map each version to its handler class's maps."""
    handler = returnClassForVersion(RHEL7)
    return handler(mapping=handler.commandMap, dataMapping=handler.dataMap)


class Validator:
    """pykickstart's RHEL7 grammar, one handler and parser for all kickstarts (building a
    handler costs ~20 ms), then the RHEL 7.9 grammar's own limits (builder/el7grammar.py)."""

    def __init__(self) -> None:
        self.handler = _rhel7_handler()
        self.parser = _Parser(self.handler)
        self.shown = _ShownWarnings()
        self._together = _Together()
        for command in {id(c): c for c in self.handler.commands.values() if c}.values():
            options = vars(command).get("op")
            if isinstance(options, KSOptionParser):
                vars(command)["op"] = _MemoOptions(options, self.shown, self._together)
        for section in self.parser._sections.values():
            if hasattr(section, "_getParser"):
                section._getParser = _OnceOptions(section._getParser, self.shown,
                                                self._together)
        self.commands = {name: _Pristine(command)
                         for name, command in self.handler.commands.items() if command}
        self.sections = {name: _Pristine(section)
                         for name, section in self.parser._sections.items()}
        self.parser.parses = _ParseMemo(self.commands, self.handler, self.shown,
                                         self._together)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Kickstarts validated inside share most of their lines (a host's ks/ and PXE
        kickstarts): what one parses is remembered for the others from its first time on,
        a host's own lines too (across hosts only what recurs is), and forgotten after."""
        assert not self._together.active, "not nested"
        self._together.active = True
        try:
            yield
        finally:
            self._together.active = False
            self._together.memo.clear()

    def _reset(self) -> None:
        """Put back what the last kickstart may have changed."""
        for name in self.parser.dispatched:
            if name in self.commands:
                self.commands[name].restore()
        self.parser.dispatched.clear()
        for name in self.parser.opened:
            self.sections[name].restore()
        self.parser.opened.clear()
        handler = self.handler
        handler.scripts = []
        handler.packages = Packages()
        handler.certificates = []
        handler.platform = ""
        handler._null_section_strings = []
        handler.currentLine = ""

    def validate(self, text: str, name: str) -> None:
        self._reset()
        with warnings.catch_warnings():
            warnings.simplefilter("error", KickstartWarning)
            warnings.showwarning = self.shown.counting(warnings.showwarning)
            ksparser.shlex = _MemoShlex
            try:
                self.parser.readKickstartFromString(text)
            except (KickstartError, KickstartWarning) as exc:
                message = " ".join(str(exc).split())
                raise KsbuildError(f"{name}: pykickstart (RHEL7) rejects it: {message}") from None
            finally:  # always the module itself after (even if validators overlap)
                ksparser.shlex = shlex
        strict = el7grammar.problem(text)
        if strict is not None:
            raise KsbuildError(f"{name}: the RHEL 7.9 grammar (pykickstart 1.99.66.22) rejects "
                               f"it: {strict}")

