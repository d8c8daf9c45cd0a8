"""Task files: a streaming JSONL reader and per-line validation.

A task file is read one physical line at a time (a million-line file runs in
constant memory, apart from the set of output names used to catch duplicates).
UTF-8 with or without a BOM, LF or CRLF (a UTF-16 file, CR-only line endings and
a BOM anywhere but at the start are reported per line, saying so). Blank lines and
lines whose first non-blank character is `#` are skipped but still counted, so line numbers are
always 1-based physical line numbers an editor shows. A line longer than
`MAX_LINE_BYTES` (1 MiB) is not held in memory: it is read in chunks, dropped,
and recorded as invalid (a runaway line must not take the worker's memory).

Each other line yields either a `Task` or an `InvalidLine` carrying an
`InvalidTaskError` that names the line and field; reading never stops at a bad
line. Fields:

    input_text    (required; alias syn_text)   text to speak, not blank, <= MAX_TEXT_CHARS
    prompt_audio  (alias prompt_speech)        voice prompt; a relative path is looked up in
                                               the task file's folder, then in the working
                                               directory (see `prompt_bases`)
    prompt_text                                transcript of the prompt audio
    output_name   (alias uttid)                WAV name without ".wav"; default: line number
    seed                                       int, overrides the run seed
    phoneme                                    bool, Chinese G2P mode (absent: run default)

Every string field must be valid Unicode: JSON lets a line spell a lone surrogate
(`"\\ud800"`), which no UTF-8 writer (manifest, engine, file system) can encode.
`input_text` and `prompt_text` may not contain control characters other than tab,
newline and carriage return (espeak-ng, for one, stops reading at a NUL).

Unknown fields are an error (a typo must not be silently ignored), and so is
giving both an alias and its canonical name. `output_name` must be a plain,
portable file name: no path separators, no `.`/`..`, no control characters, no
leading dot, no trailing dot or space, no characters Windows forbids, no
Windows device names (also COM0, COM¹ and the like), no invisible format characters
(bidi controls, zero-width characters, BOM: a name must look like what it is), at most
200 UTF-8 bytes. Duplicate names are rejected case-insensitively (after Unicode NFC), because case-insensitive file systems
and zip extractors would otherwise overwrite one WAV with another.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InvalidTaskError, PromptAudioError, RunError, TaskError
from .nameindex import NameIndex

# Where a relative prompt path was found (`Task.prompt_base`, the manifest's `prompt_base`).
TASK_FILE_DIR = "task_file_dir"  # the task file's own folder
WORKING_DIR = "working_dir"  # the working directory (upstream's scripts name prompts from there)
BASE_DIR = "base_dir"  # the folder given as --base-dir / base_dir=

CANONICAL_FIELDS = ("input_text", "prompt_audio", "prompt_text", "output_name", "seed", "phoneme")
ALIASES = {"syn_text": "input_text", "prompt_speech": "prompt_audio", "uttid": "output_name"}

MAX_NAME_BYTES = 200  # leaves room for ".wav" and temp-file affixes under the usual 255-byte limit
MAX_SEED = 2**63 - 1
MAX_LINE_BYTES = 1 << 20  # one task line's content, without its line ending
# A task's memory grows with its text: the audio of the whole text is held until written.
# Measured in the espeak engine (peak RSS, 24 kHz): ~8 KB per character of English (~18
# characters a second of speech), ~38 KB per character of Chinese (~4 a second). 10,000
# characters is at most ~45 minutes of speech and ~0.4 GB; a longer text is invalid rather
# than a risk to the run (a 1.5 MB text once took 24 GB).
MAX_TEXT_CHARS = 10_000
_MAX_INT_DIGITS = 100  # longer JSON integers are kept as digits (no valid seed has more than 19)
_SKIP_CHUNK = 1 << 16  # how much of an over-long line is read at a time while discarding it
_TEXT_CONTROLS_ALLOWED = set("\t\n\r")
_WINDOWS_FORBIDDEN = set('<>:"/\\|?*')
# Compared after NFKC, which maps the superscript digits Windows also reserves (COM¹) to digits.
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in range(10)
}
# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): invisible in
# a file listing. Format characters (category Cf: bidi controls, ZWJ, BOM...) are checked
# by category on top, so new ones are covered too.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"


class HugeInt(str):
    """A JSON integer too long to convert (Python refuses over 4300 digits): its digits."""


@dataclass(frozen=True)
class Task:
    """One valid task line, with paths resolved and the prompt file checked to exist."""

    line: int
    text: str
    output_name: str
    prompt_audio: Path | None = None
    prompt_text: str | None = None
    seed: int | None = None  # None: use the run seed
    phoneme: bool | None = None  # None: the run default (on when a phoneme dict is given)
    # Which folder a relative prompt_audio was found in (TASK_FILE_DIR, WORKING_DIR or
    # BASE_DIR); None for an absolute or `~` path, or no prompt.
    prompt_base: str | None = None


@dataclass(frozen=True)
class PromptBase:
    """A folder relative prompt paths are looked up in, and its name (`Task.prompt_base`)."""

    folder: Path
    name: str

    def describe(self) -> str:
        return {TASK_FILE_DIR: "the task file's folder", WORKING_DIR: "the working directory"}.get(
            self.name, "--base-dir"
        )


@dataclass(frozen=True)
class InvalidLine:
    """A line that could not become a task.

    `output_name` is the name the line asked for (lone surrogates as backslash escapes), or
    its default, the line number, when it gave none; None when the line is not an object.
    """

    line: int
    error: TaskError
    output_name: str | None = None
    seed: int | None = None


TaskOrInvalid = Task | InvalidLine


def is_skippable(text: str) -> bool:
    """Blank lines and `#` comments carry no task (they still count as lines)."""
    stripped = text.strip()
    return not stripped or stripped.startswith("#")


def check_output_name(name: str) -> None:
    """Raise `InvalidTaskError` unless `name` is a safe, portable file name stem."""

    def bad(why: str) -> InvalidTaskError:
        return InvalidTaskError(f"unsafe output_name {name!r}: {why}", field="output_name")

    if not name:
        raise bad("it is empty")
    if _lone_surrogate(name) is not None:
        raise bad("it is not valid Unicode text (lone surrogate)")
    if name in (".", ".."):
        raise bad("it is a relative path component")
    if "/" in name or "\\" in name:
        raise bad("it contains a path separator")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise bad("it contains a control character")
    invisible = next((c for c in name if _is_invisible(c)), None)
    if invisible is not None:
        raise bad(
            f"it contains the invisible character U+{ord(invisible):04X} "
            f"({unicodedata.name(invisible, 'unnamed')}), which could disguise the name"
        )
    if name.startswith("."):
        raise bad("it starts with a dot (hidden file)")
    if name.endswith((".", " ")):
        raise bad("it ends with a dot or a space")
    if name != name.strip():
        raise bad("it has leading or trailing whitespace")
    forbidden = sorted(set(name) & _WINDOWS_FORBIDDEN)
    if forbidden:
        raise bad(f"it contains {''.join(forbidden)!r}, not allowed in Windows file names")
    if unicodedata.normalize("NFKC", name.split(".")[0]).rstrip(" ").upper() in _WINDOWS_DEVICES:
        raise bad("it is a reserved Windows device name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise bad(f"it is longer than {MAX_NAME_BYTES} bytes")


def _is_invisible(c: str) -> bool:
    if unicodedata.category(c) in ("Cf", "Zl", "Zp"):
        return True
    code = ord(c)
    return any(lo <= code <= hi for lo, hi in _DEFAULT_IGNORABLE)


def _lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate (U+D800..U+DFFF) in `text`, or None.

    A Python str holds surrogates only unpaired: json.loads joins escaped pairs.
    """
    for i, c in enumerate(text):
        if "\ud800" <= c <= "\udfff":
            return i
    return None


def check_string(line: int, key: str, value: str, *, controls: bool = True) -> None:
    """Reject text no UTF-8 writer can encode and, unless `controls`, control characters."""
    i = _lone_surrogate(value)
    if i is not None:
        raise InvalidTaskError(
            f"line {line}: {key} is not valid Unicode text (lone surrogate U+{ord(value[i]):04X} at character {i})",
            field=key,
        )
    if not controls:
        for i, c in enumerate(value):
            if unicodedata.category(c) == "Cc" and c not in _TEXT_CONTROLS_ALLOWED:
                raise InvalidTaskError(
                    f"line {line}: {key} contains control character U+{ord(c):04X} at character {i} "
                    "(only tab, newline and carriage return are allowed)",
                    field=key,
                )


def printable(text: str) -> str:
    """`text` with lone surrogates as backslash escapes, so it can be written as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def name_key(name: str) -> str:
    """Identity of an output name on a case-insensitive file system."""
    return unicodedata.normalize("NFC", name).casefold()


class TaskValidator:
    """Turns decoded objects into Tasks. Holds the names seen so far (duplicate check).

    `bases`: the folders a relative prompt path is looked up in, first match wins (a bare
    `Path` is one explicit base, `BASE_DIR`).
    """

    def __init__(self, bases: Path | Sequence[PromptBase]) -> None:
        self.bases = (PromptBase(bases, BASE_DIR),) if isinstance(bases, Path) else tuple(bases)
        self._names = NameIndex()  # name_key -> first line using it (digests: flat memory per line)

    def validate(self, line: int, obj: Any) -> Task:
        if not isinstance(obj, Mapping):
            raise InvalidTaskError(f"line {line}: expected a JSON object, got {_json_type(obj)}")
        fields = self._canonical_fields(line, obj)
        # The name comes first so that later errors on this line still report it.
        name = self._output_name(line, fields)

        if "input_text" not in fields:
            raise InvalidTaskError(f"line {line}: missing required field 'input_text'", field="input_text")
        text = _typed(line, fields, "input_text", str)
        check_string(line, "input_text", text, controls=False)
        if not text.strip():
            raise InvalidTaskError(f"line {line}: input_text is empty", field="input_text")
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidTaskError(
                f"line {line}: input_text has {len(text)} characters, more than the limit of "
                f"{MAX_TEXT_CHARS} per task (split it over several lines)",
                field="input_text",
            )

        prompt_text = _typed(line, fields, "prompt_text", str, optional=True)
        if prompt_text is not None:
            check_string(line, "prompt_text", prompt_text, controls=False)
        seed = _typed(line, fields, "seed", int, optional=True)
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InvalidTaskError(f"line {line}: seed {_describe_int(seed)} is outside 0..2**63-1", field="seed")
        phoneme = _typed(line, fields, "phoneme", bool, optional=True)

        prompt_audio: Path | None = None
        prompt_base: str | None = None
        raw_prompt = _typed(line, fields, "prompt_audio", str, optional=True)
        if raw_prompt is not None:
            check_string(line, "prompt_audio", raw_prompt)
            if not raw_prompt.strip() or "\x00" in raw_prompt:
                raise InvalidTaskError(f"line {line}: prompt_audio is not a usable path", field="prompt_audio")
            prompt_audio, prompt_base = self._find_prompt(line, raw_prompt)

        return Task(
            line=line,
            text=text,
            output_name=name,
            prompt_audio=prompt_audio,
            prompt_text=prompt_text,
            seed=seed,
            phoneme=phoneme,
            prompt_base=prompt_base,
        )

    def _find_prompt(self, line: int, raw: str) -> tuple[Path, str | None]:
        """The prompt file and the name of the base it was found in (None: an absolute path).

        Only "not found" moves on to the next base: a file that is there but cannot be used
        (unreadable, a folder) is this task's error, rather than a quiet switch to another voice.
        """
        path = Path(os.path.expanduser(raw))
        if path.is_absolute():
            _check_prompt_file(line, path)
            return path, None
        looked: list[tuple[PromptBase, Path]] = []
        for base in self.bases:
            candidate = base.folder / path
            if _check_prompt_file(line, candidate, missing_ok=True):
                return candidate, base.name
            looked.append((base, candidate))
        if len(looked) == 1:
            raise PromptAudioError(f"line {line}: prompt_audio {str(looked[0][1])!r} not found")
        places = " and ".join(f"{str(candidate)!r} ({base.describe()})" for base, candidate in looked)
        raise PromptAudioError(
            f"line {line}: prompt_audio {raw!r} not found: looked for {places} "
            "(--base-dir DIR names the folder relative prompt paths start from)"
        )

    def _canonical_fields(self, line: int, obj: Mapping) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        unknown = [k for k in obj if k not in CANONICAL_FIELDS and k not in ALIASES]
        if unknown:
            names = ", ".join(repr(str(k)) for k in unknown)
            raise InvalidTaskError(
                f"line {line}: unknown field {names} (allowed: {', '.join(CANONICAL_FIELDS)}; "
                f"aliases: {', '.join(ALIASES)})",
                field=printable(str(unknown[0])),
            )
        for key, value in obj.items():
            canonical = ALIASES.get(key, key)
            if canonical in fields:
                alias = key if key in ALIASES else next(a for a, c in ALIASES.items() if c == key)
                raise InvalidTaskError(
                    f"line {line}: both {alias!r} and its canonical name {canonical!r} are given",
                    field=canonical,
                )
            fields[canonical] = value
        return fields

    def _output_name(self, line: int, fields: dict[str, Any]) -> str:
        raw = fields.get("output_name")
        if raw is None:
            name = str(line)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            name = _int_name(line, raw)  # numeric utterance ids are common
        elif isinstance(raw, str):
            name = str(raw)  # a HugeInt's digits, as str() of a number would give
        else:
            raise InvalidTaskError(
                f"line {line}: output_name must be a string, got {_json_type(raw)}", field="output_name"
            )
        try:
            check_output_name(name)
        except InvalidTaskError as e:
            raise InvalidTaskError(f"line {line}: {e}", field="output_name") from None
        key = name_key(name)
        first = self._names.get(key)
        if first is not None:
            raise InvalidTaskError(
                f"line {line}: duplicate output_name {name!r} (already used on line {first}; "
                "names are compared case-insensitively)",
                field="output_name",
            )
        self._names[key] = line
        return name


def _check_prompt_file(line: int, path: Path, *, missing_ok: bool = False) -> bool:
    """The prompt must be a file. Any OS error on it (ENAMETOOLONG, EACCES, ELOOP...) is this task's.

    With `missing_ok`, a path that is not there (a missing file or folder on the way)
    returns False instead of raising."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if missing_ok:
            return False
        raise PromptAudioError(f"line {line}: prompt_audio {str(path)!r} not found") from None
    except OSError as e:
        raise PromptAudioError(
            f"line {line}: prompt_audio {printable(str(path))!r} cannot be used: {e.strerror or e}"
        ) from None
    except ValueError as e:  # e.g. a path the OS cannot represent
        raise PromptAudioError(f"line {line}: prompt_audio is not a usable path ({e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise PromptAudioError(f"line {line}: prompt_audio {str(path)!r} is not a file")
    return True


def _describe_int(value: int) -> str:
    """`value` for a message; str() of a huge int raises ValueError (Python's digit limit)."""
    if abs(value) < 10**30:
        return str(value)
    return f"(a number of about {int(value.bit_length() * 0.30103) + 1} digits)"


def _int_name(line: int, value: int) -> str:
    if abs(value) >= 10**MAX_NAME_BYTES:  # a name of over 200 digits is too long anyway
        raise InvalidTaskError(
            f"line {line}: unsafe output_name: a number of more than {MAX_NAME_BYTES} digits is longer "
            f"than {MAX_NAME_BYTES} bytes",
            field="output_name",
        )
    return str(value)


def _typed(line: int, fields: Mapping[str, Any], key: str, kind: type, optional: bool = False) -> Any:
    value = fields.get(key)
    if value is None and optional:
        return None
    if isinstance(value, HugeInt):
        if kind is int:
            raise InvalidTaskError(
                f"line {line}: {key} is a number of {len(value.lstrip('-'))} digits, outside 0..2**63-1",
                field=key,
            )
        value = 0  # reported below as the wrong type, "a number"
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        want = {str: "a string", int: "an integer", bool: "true or false"}[kind]
        raise InvalidTaskError(f"line {line}: {key} must be {want}, got {_json_type(value)}", field=key)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _raw_output_name(line: int, obj: Any) -> str | None:
    """Best-effort name for the manifest record of an invalid line (printable, see `printable`)."""
    if not isinstance(obj, Mapping):
        return None
    raw = obj.get("output_name", obj.get("uttid"))
    if raw is None:
        return str(line)  # the default name, as a valid line would have had
    if isinstance(raw, str):  # HugeInt included: its digits
        return printable(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) < 10**MAX_NAME_BYTES:
        return str(raw)
    return None


def _raw_seed(obj: Any) -> int | None:
    if isinstance(obj, Mapping):
        seed = obj.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
            return seed  # an out-of-range seed is not echoed: the manifest could not hold it
    return None


def _validate(validator: TaskValidator, line: int, obj: Any) -> TaskOrInvalid:
    try:
        return validator.validate(line, obj)
    except TaskError as e:
        return InvalidLine(line=line, error=e, output_name=_raw_output_name(line, obj), seed=_raw_seed(obj))


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _parse_int(digits: str) -> int | HugeInt:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else HugeInt(digits)


def _encoding_problem(line: int, raw: bytes) -> InvalidTaskError | None:
    """A line that is not UTF-8 JSON for a reason worth naming (wrong encoding, stray BOM, CR endings)."""
    if len(raw) > 3 and not raw.strip(b"\x00"):
        return InvalidTaskError(f"line {line}: the line is all NUL bytes (was the file cut short by a crash?)")
    if raw[:2] in _UTF16_BOMS or (raw.count(0) * 3 >= len(raw) > 0):
        # ASCII text in UTF-16 is every other byte NUL (UTF-32: three in four).
        return InvalidTaskError(
            f"line {line}: the task file looks UTF-16 or UTF-32 encoded (byte order mark or NUL bytes "
            "between characters); save it as UTF-8"
        )
    if line > 1 and raw.startswith(_UTF8_BOM):
        return InvalidTaskError(
            f"line {line}: starts with a byte order mark (BOM), which is allowed only at the start of "
            "the file (were files joined together?); remove it"
        )
    return None


def _looks_cr_separated(text: str) -> bool:
    """Several task lines joined by bare CRs (a CR inside a string is just invalid JSON)."""
    pieces = [p.strip() for p in text.split("\r") if p.strip()]
    return len(pieces) >= 2 and pieces[1].startswith(("{", "#"))


def _json_problem(line: int, text: str, err: ValueError) -> InvalidTaskError:
    if _looks_cr_separated(text):
        return InvalidTaskError(
            f"line {line}: invalid JSON, and the line holds carriage returns not followed by a newline: "
            "the file seems to use CR-only (old Mac) line endings; save it with LF or CRLF line endings"
        )
    bom = text.find("\ufeff")
    if bom >= 0:
        return InvalidTaskError(
            f"line {line}: invalid JSON: stray byte order mark (U+FEFF) at character {bom}; remove it"
        )
    return InvalidTaskError(f"line {line}: invalid JSON: {err}")


def _decode_line(line: int, raw: bytes) -> tuple[str | None, TaskOrInvalid | None]:
    """Returns (text, None) for a line to parse, (None, None) to skip, or (None, InvalidLine)."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if line == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[3:]
    problem = _encoding_problem(line, raw)
    if problem is not None:
        return None, InvalidLine(line=line, error=problem)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if is_skippable(raw.decode("utf-8", "replace")):
            return None, None
        err = InvalidTaskError(f"line {line}: not valid UTF-8 (byte {e.start})")
        return None, InvalidLine(line=line, error=err)
    if is_skippable(text):
        return None, None
    return text, None


def parse_line(validator: TaskValidator, line: int, raw: bytes) -> TaskOrInvalid | None:
    """One physical line to a Task / InvalidLine, or None for blank and comment lines."""
    text, invalid = _decode_line(line, raw)
    if invalid is not None:
        return invalid
    if text is None:
        return None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except RecursionError as e:
        return InvalidLine(line=line, error=InvalidTaskError(f"line {line}: invalid JSON: {e}"))
    except ValueError as e:
        return InvalidLine(line=line, error=_json_problem(line, text, e))
    return _validate(validator, line, obj)


def open_task_file(path: str | Path):
    """Open a task file for streaming, turning OS errors into `RunError` (exit 2)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise RunError(f"task file {str(path)!r} is a folder")
        return open(path, "rb")
    except OSError as e:
        raise RunError(f"cannot read task file {str(path)!r}: {e.strerror or e}") from None


def _is_regular(path: str | Path, f: BinaryIO | None) -> bool:
    try:
        return stat.S_ISREG((os.fstat(f.fileno()) if f is not None else os.stat(path)).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def explicit_base(base_dir: str | os.PathLike[str]) -> PromptBase:
    """`--base-dir DIR`: the one folder relative prompt paths resolve against (no search)."""
    folder = Path(base_dir)
    if not folder.is_dir():
        raise RunError(f"base_dir {str(folder)!r} is not a folder")
    return PromptBase(folder.absolute(), BASE_DIR)


def prompt_bases(path: str | Path, f: BinaryIO | None = None) -> tuple[PromptBase, ...]:
    """Where a task file's relative prompt paths are looked up, in order, without --base-dir.

    The task file's folder, then the working directory: upstream GLM-TTS's scripts run
    from their repository and name prompts from there (`"prompt_speech":
    "examples/prompt/jiayan_zh.wav"` in `examples/example_zh.jsonl`). A pipe has no folder
    of its own: the working directory only.
    """
    cwd = Path.cwd()
    if not _is_regular(path, f):
        return (PromptBase(cwd, WORKING_DIR),)
    own = Path(path).resolve().parent
    if own == cwd.resolve():
        return (PromptBase(own, TASK_FILE_DIR),)
    return PromptBase(own, TASK_FILE_DIR), PromptBase(cwd, WORKING_DIR)


def iter_task_file(path: str | Path, base_dir: str | os.PathLike[str] | None = None) -> Iterator[TaskOrInvalid]:
    """Stream a JSONL task file. Relative prompt paths resolve against `base_dir` when
    given, else as `prompt_bases` says."""
    path = Path(path)
    explicit = explicit_base(base_dir) if base_dir is not None else None
    f = open_task_file(path)
    return iter_open_task_file(f, (explicit,) if explicit is not None else prompt_bases(path, f))


def iter_open_task_file(f: BinaryIO, bases: Path | Sequence[PromptBase]) -> Iterator[TaskOrInvalid]:
    """Stream tasks from an already opened binary file; closes it when exhausted.

    `bases`: see `TaskValidator` (`prompt_bases` gives a task file's)."""
    validator = TaskValidator(bases)
    with f:
        for line, raw in enumerate(_bounded_lines(f), start=1):
            if isinstance(raw, _OverlongLine):
                message = f"line {line}: line longer than {MAX_LINE_BYTES // (1 << 20)} MiB"
                if raw.has_cr:
                    message += (
                        " (it holds carriage returns not followed by a newline: the file seems to use "
                        "CR-only line endings; save it with LF or CRLF line endings)"
                    )
                # The default name, as for any line that gives none: its outputs are then findable.
                yield InvalidLine(line=line, error=InvalidTaskError(message), output_name=str(line))
                continue
            item = parse_line(validator, line, raw)
            if item is not None:
                yield item


@dataclass(frozen=True)
class _OverlongLine:
    has_cr: bool  # a bare CR in its first MiB: probably CR-only line endings


def _bounded_lines(f: BinaryIO) -> Iterator[bytes | _OverlongLine]:
    """Physical lines of `f`; an `_OverlongLine` for a line whose content exceeds MAX_LINE_BYTES.

    readline(limit) never buffers more than the limit, and the rest of an over-long
    line is discarded in small chunks, so memory stays bounded whatever the file holds.
    """
    limit = MAX_LINE_BYTES + 2  # room for the line's own "\r\n"
    while raw := f.readline(limit):
        if not raw.endswith(b"\n") and len(raw) == limit:
            has_cr = b"\r" in raw[:-1]
            del raw
            while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
            yield _OverlongLine(has_cr)
            continue
        content = len(raw) - raw.endswith(b"\n") - raw.endswith(b"\r\n")
        yield _OverlongLine(b"\r" in raw[:content]) if content > MAX_LINE_BYTES else raw


def iter_task_dicts(tasks: Iterable[Any], base_dir: str | os.PathLike[str] | None = None) -> Iterator[TaskOrInvalid]:
    """Validate tasks given as mappings (Python API). Line = 1-based position.

    Relative prompt paths resolve against `base_dir`, default the working directory."""
    base = explicit_base(base_dir) if base_dir is not None else PromptBase(Path.cwd(), WORKING_DIR)
    return _validated(TaskValidator((base,)), tasks)


def _validated(validator: TaskValidator, tasks: Iterable[Any]) -> Iterator[TaskOrInvalid]:
    for line, obj in enumerate(tasks, start=1):
        yield _validate(validator, line, obj)


def count_lines(path: str | Path, chunk: int = 1 << 20) -> int:
    """Physical line count, read in chunks (for a progress bar's total)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")
