"""Experiment grids as data: a TOML file of models × compression specs × evaluations × seeds, checked and
expanded into independent :class:`pvq.scale.jobs.Job` s before any of them runs.

File format (every key but ``models`` and ``evaluations`` is optional)::

    results = "results"            # result tables (the folder `pvq figures` reads); default "results"
    device = "auto"                # auto | cpu | cuda | cuda:N (auto = cuda when available)
    dtype = "float32"              # float32 | float16 | bfloat16

    [resources]                    # what each job asks of a SLURM node (defaults for every [[grid]])
    gpus = 1
    cpus = 8
    mem = "64GB"                   # or "500MB", or a number of GB
    time = "04:00:00"              # [D-]HH:MM:SS, or minutes
    partition = "gpu"              # also: account, qos, constraint, array_parallelism
    setup = ["module load cuda"]   # shell lines run before each job

    [eval]                         # `pvq eval` options of perplexity / task jobs
    max_windows = 8                # also: window, stride, limit, batch_size

    [[grid]]                       # one or more; the jobs of all grids are pooled
    models = ["smollm2-135m"]      # defaults, local folders, .gguf files or hub ids (org/name)
    specs = ["none", "gptq:4:g128", "sparsegpt:0.5"]
    evaluations = ["ppl", "csqa", "theory_formats_gaussian"]
    seeds = [0]
    # a [[grid]] may override device, dtype, [grid.resources] and [grid.eval]

An evaluation is ``ppl`` (perplexity), a task of :mod:`measure.evaluation.lmeval` (or ``lm_eval:<task>``), or
a figure experiment of :mod:`figures.catalog`. Expansion: a perplexity or task evaluation gives one job per
model × spec (evaluations are deterministic, so seeds do not multiply them); an experiment gives one job per
model × seed (the experiment declares its own specs in its config; a model-free experiment, one per seed).
Jobs are sorted by :meth:`Job.sort_key` and named by a hash of what they compute, so the same file always
gives the same jobs in the same order. Any unknown key, model, spec, evaluation or bad value is a
:class:`PvqError` naming the file and line, raised before any job starts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pvq.commands.common import DTYPES, check_device_name
from pvq.scale.jobs import EVAL_KIND, EXPERIMENT_KIND, NO_SPEC, PERPLEXITY, Job, Resources
from theory.errors import PvqError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TOP_KEYS = ("results", "device", "dtype", "resources", "eval", "grid")
GRID_KEYS = ("models", "specs", "evaluations", "seeds", "device", "dtype", "resources", "eval")
RESOURCE_KEYS = ("gpus", "cpus", "mem", "time", "partition", "account", "qos", "constraint", "setup",
                 "array_parallelism")
EVAL_OPTIONS = ("window", "stride", "max_windows", "limit", "batch_size")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([MG])B?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{2}):(\d{2})$")
MIB_PER_GIB = 1024
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class _Header:
    line: int
    name: str
    array: bool


class TomlLines:
    """Line numbers of keys and values in TOML text (tomllib reports none for valid TOML).

    A location is a path such as ``("grid", 1, "specs")`` (the second ``[[grid]]``'s ``specs``) or
    ``("resources", "mem")``; :meth:`line_of` finds the section, then the key, then optionally the line
    holding a given value at or after the key (for entries of multi-line arrays).
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [
            _Header(number, re.sub(r"[\"' ]", "", match.group(2)), match.group(1) == "[[")
            for number, line in enumerate(self.lines)
            if (match := _HEADER.match(line))
        ]

    def _next_header(self, line: int, inside: Callable[[_Header], bool] = lambda header: False) -> int:
        """Line of the first header after ``line`` that is not ``inside`` the section (or the text's end)."""
        return next((h.line for h in self.headers if h.line > line and not inside(h)), len(self.lines))

    def _section(self, path: KeyPath) -> tuple[int, int, KeyPath]:
        """Line range [start, end) holding ``path``, and the rest of the path to look for inside it."""
        if len(path) > 1 and isinstance(path[1], int):
            blocks = [h for h in self.headers if h.array and h.name == path[0]]
            if path[1] >= len(blocks):
                return 0, len(self.lines), ()
            block, rest = blocks[path[1]], path[2:]
            end = self._next_header(block.line, lambda h: h.name.startswith(f"{path[0]}."))
            nested = next((h for h in self.headers if rest and block.line < h.line < end
                           and h.name == f"{path[0]}.{rest[0]}"), None)
            if nested is not None:
                return nested.line, self._next_header(nested.line), rest[1:]
            return block.line, end, rest
        table = next((h for h in self.headers if path and not h.array and h.name == path[0]), None)
        if table is not None:
            return table.line, self._next_header(table.line), path[1:]
        return 0, self._next_header(-1), path

    def line_of(self, path: KeyPath, value: Any = None) -> int:
        """1-based line of ``path`` (and of ``value`` under it, when given); 1 when nothing matches."""
        start, end, rest = self._section(path)
        for key in (part for part in rest if isinstance(part, str)):
            pattern = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*=")
            found = next((n for n in range(start, end) if pattern.search(self.lines[n])), None)
            if found is None:
                break
            start = found
        if value is not None:
            literal = re.compile(rf"[\"']{re.escape(value)}[\"']" if isinstance(value, str) else
                                 rf"(?<![\w.]){re.escape(str(value))}(?![\w.])")
            found = next((n for n in range(start, end) if literal.search(self.lines[n])), None)
            start = found if found is not None else start
        return start + 1


class _Checker:
    """Validation with errors that name ``<file>:<line>``."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.locate = TomlLines(text)

    def fail(self, path: KeyPath, message: str, value: Any = None) -> PvqError:
        line = self.locate.line_of(path, value)
        return PvqError(f"{self.source}:{line}: {message}")

    def keys(self, table: Any, allowed: Sequence[str], path: KeyPath, what: str) -> Mapping[str, Any]:
        if not isinstance(table, Mapping):
            raise self.fail(path, f"{what} must be a table of keys")
        for key in table:
            if key not in allowed:
                raise self.fail((*path, key), f"unknown key {key!r} in {what}; allowed: {', '.join(allowed)}")
        return table

    def strings(self, value: Any, path: KeyPath, what: str, required: bool) -> list[str]:
        if value is None and not required:
            return []
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(path, f"{what} must be a non-empty list of strings, e.g. {path[-1]} = [\"...\"]")
        for index, item in enumerate(value):
            if item in value[:index]:
                raise self.fail(path, f"{item!r} is listed twice in {what}", item)
        return [v.strip() for v in value]


def _positive_int(value: Any, minimum: int = 1) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    return value if ok else None


def memory_gb(value: Any) -> float | None:
    """``"64GB"``/``"64G"``/``"500MB"``/a number of GB -> GB (1 GB = 1024 MB, SLURM's unit), or None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        return None
    amount = float(match.group(1))
    return amount if match.group(2).upper() == "G" else amount / MIB_PER_GIB


def minutes(value: Any) -> int | None:
    """``"[D-]HH:MM:SS"`` or a number of minutes -> whole minutes (rounded up), or None."""
    if _positive_int(value) is not None:
        return value
    match = _TIME.match(value) if isinstance(value, str) else None
    if not match:
        return None
    days, hours, mins, secs = (int(part or 0) for part in match.groups())
    total = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    return total if total > 0 else None


def _resources(checker: _Checker, table: Any, path: KeyPath, base: Resources) -> Resources:
    """``base`` updated by a ``[resources]`` table (see the module docstring)."""
    if table is None:
        return base
    checker.keys(table, RESOURCE_KEYS, path, "[resources]")
    converters: dict[str, tuple[str, Callable[[Any], Any], str]] = {
        "gpus": ("gpus", lambda v: _positive_int(v, 0), "a whole number ≥ 0"),
        "cpus": ("cpus", _positive_int, "a whole number ≥ 1"),
        "mem": ("mem_gb", memory_gb, "a size such as \"64GB\" or \"500MB\""),
        "time": ("timeout_min", minutes, "a duration such as \"04:00:00\", \"1-00:00:00\" or minutes"),
        "array_parallelism": ("array_parallelism", _positive_int, "a whole number ≥ 1"),
        "setup": ("setup", lambda v: tuple(v) if isinstance(v, list) and all(isinstance(s, str) for s in v)
                  else None, "a list of shell lines"),
    }
    changes = {}
    for key, value in table.items():
        field_name, convert, expected = converters.get(
            key, (key, lambda v: v if isinstance(v, str) and v else None, "a non-empty string")
        )
        converted = convert(value)
        if converted is None:
            raise checker.fail((*path, key), f"resources.{key} = {value!r} is not {expected}")
        changes[field_name] = converted
    return replace(base, **changes)


def _eval_options(checker: _Checker, table: Any, path: KeyPath, base: dict[str, int]) -> dict[str, int]:
    if table is None:
        return base
    checker.keys(table, EVAL_OPTIONS, path, "[eval]")
    for key, value in table.items():
        if _positive_int(value) is None:
            raise checker.fail((*path, key), f"eval.{key} = {value!r} must be a whole number ≥ 1")
    return {**base, **table}


def _settings(checker: _Checker, table: Mapping[str, Any], path: KeyPath, base: dict[str, Any]) -> dict[str, Any]:
    """device, dtype, resources and eval options of a level (top or one [[grid]]) over ``base``."""
    settings = dict(base)
    if "device" in table:
        try:
            settings["device"] = check_device_name(table["device"])
        except PvqError as error:
            raise checker.fail((*path, "device"), str(error)) from None
    if "dtype" in table:
        if table["dtype"] not in DTYPES:
            message = f"unknown dtype {table['dtype']!r}; use one of {', '.join(DTYPES)}"
            raise checker.fail((*path, "dtype"), message)
        settings["dtype"] = table["dtype"]
    settings["resources"] = _resources(checker, table.get("resources"), (*path, "resources"), base["resources"])
    settings["options"] = _eval_options(checker, table.get("eval"), (*path, "eval"), base["options"])
    return settings


def model_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model (None when it can): a default, a folder, a .gguf file or a hub id."""
    from measure.models.defaults import DEFAULT_MODELS

    path = Path(name).expanduser()
    if name in DEFAULT_MODELS or path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return None
    if HUB_ID.match(name) and not path.exists() and not name.startswith("."):
        return None
    return (
        f"unknown model {name!r}: not a default ({', '.join(DEFAULT_MODELS)}), an existing folder or .gguf file, "
        "or a Hugging Face id such as \"meta-llama/Llama-2-7b-hf\""
    )


def spec_problem(spec: str) -> str | None:
    """Why ``spec`` is not a compression spec (None when it is; ``none`` means uncompressed)."""
    if spec == NO_SPEC:
        return None
    from measure.compress.spec import parse_spec

    try:
        parse_spec(spec)
    except PvqError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class Evaluation:
    """An evaluation name resolved: job kind and whether it needs a model."""

    name: str
    kind: str
    needs_model: bool = True


def resolve_evaluation(name: str) -> Evaluation:
    """``ppl``, a task (ours or ``lm_eval:<task>``) or a figure experiment; else a PvqError listing them."""
    from measure.evaluation.lmeval import STOCK_PREFIX, TASKS

    if name == PERPLEXITY or name in TASKS or (name.startswith(STOCK_PREFIX) and len(name) > len(STOCK_PREFIX)):
        return Evaluation(name, EVAL_KIND)
    from figures.experiments import EXPERIMENTS
    from figures.registry import load_catalog

    load_catalog()
    if name in EXPERIMENTS:
        return Evaluation(name, EXPERIMENT_KIND, EXPERIMENTS[name].needs_model)
    raise PvqError(
        f"unknown evaluation {name!r}; use {PERPLEXITY!r}, a task ({', '.join(TASKS)}, or {STOCK_PREFIX}<task>) "
        f"or a figure experiment ({', '.join(sorted(EXPERIMENTS))})"
    )


def _check_stock_tasks(checker: _Checker, names: list[str], path: KeyPath) -> None:
    """Ask lm-eval once whether it knows every ``lm_eval:<task>`` of a grid (indexing its tasks takes seconds)."""
    if not names:
        return
    from measure.evaluation.lmeval import check_stock_tasks, resolve_tasks

    try:
        check_stock_tasks(resolve_tasks(names))
    except PvqError as error:
        culprit = next((name for name in names if repr(name.partition(":")[2]) in str(error)), None)
        raise checker.fail((*path, "evaluations"), str(error), culprit) from None


def _expand_grid(checker: _Checker, grid: Mapping[str, Any], index: int, base: dict[str, Any]) -> Iterator[Job]:
    path: KeyPath = ("grid", index)
    checker.keys(grid, GRID_KEYS, path, f"[[grid]] number {index + 1}")
    for required in ("models", "evaluations"):
        if required not in grid:
            raise checker.fail(path, f"[[grid]] number {index + 1} has no {required!r} list")
    settings = _settings(checker, grid, path, base)
    models = checker.strings(grid["models"], (*path, "models"), "models", required=True)
    specs = checker.strings(grid.get("specs"), (*path, "specs"), "specs", required=False) or [NO_SPEC]
    names = checker.strings(grid["evaluations"], (*path, "evaluations"), "evaluations", required=True)
    seeds = grid.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or any(_positive_int(s, 0) is None for s in seeds):
        raise checker.fail((*path, "seeds"), "seeds must be a non-empty list of whole numbers ≥ 0")
    for model in models:
        if (problem := model_problem(model)) is not None:
            raise checker.fail((*path, "models"), problem, model)
    for spec in specs:
        if (problem := spec_problem(spec)) is not None:
            raise checker.fail((*path, "specs"), problem, spec)
    evaluations = []
    for name in names:
        try:
            evaluations.append(resolve_evaluation(name))
        except PvqError as error:
            raise checker.fail((*path, "evaluations"), str(error), name) from None
    _check_stock_tasks(checker, [name for name in names if name.startswith("lm_eval:")], path)
    common = {"dtype": settings["dtype"], "device": settings["device"], "results": base["results"],
              "resources": settings["resources"]}
    options = tuple(sorted(settings["options"].items()))
    for evaluation in evaluations:
        if evaluation.kind == EVAL_KIND:
            for model in models:
                for spec in specs:
                    yield Job(EVAL_KIND, evaluation.name, model, spec, None, options=options, **common)
            continue
        for model in models if evaluation.needs_model else [None]:
            for seed in seeds:
                yield Job(EXPERIMENT_KIND, evaluation.name, model, NO_SPEC, seed, **common)


def parse_grid(text: str, source: str = "<experiment file>") -> list[Job]:
    """Check a grid file's text and expand it into its sorted, de-duplicated jobs (module docstring)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise PvqError(f"{source}: not valid TOML: {error}") from None
    checker = _Checker(source, text)
    checker.keys(document, TOP_KEYS, (), "the experiment file")
    results = document.get("results", "results")
    if not isinstance(results, str) or not results:
        raise checker.fail(("results",), "results must be a folder name such as \"results\"")
    base = _settings(checker, document, (), {
        "device": "auto", "dtype": "float32", "resources": Resources(), "options": {}, "results": results,
    })
    grids = document.get("grid")
    if not isinstance(grids, list) or not grids:
        raise checker.fail(("grid",), "the experiment file declares no [[grid]]; add one with models, evaluations")
    jobs: dict[str, Job] = {}
    for index, grid in enumerate(grids):
        for job in _expand_grid(checker, grid, index, base):
            earlier = jobs.setdefault(job.job_id, job)
            if earlier != job:
                raise checker.fail(("grid", index), f"job {job.label()} is also declared by an earlier [[grid]] "
                                   "with other device or resources; declare it once")
    return sorted(jobs.values(), key=Job.sort_key)


def load_grid(path: str | Path) -> list[Job]:
    """Read, check and expand the experiment file at ``path`` (see :func:`parse_grid`)."""
    file = Path(path)
    if not file.is_file():
        raise PvqError(f"experiment file {file} does not exist; see pvq/scale/experiment_files/ for examples")
    if file.suffix != ".toml":
        raise PvqError(f"experiment file {file} must be TOML (*.toml); see pvq/scale/experiment_files/ for examples")
    return parse_grid(file.read_text(), str(file))
