"""One exception hierarchy: every error class lives in errors.py, carries its exit code, and is exported."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import glmtts_batch
from glmtts_batch import errors
from glmtts_batch.cli import main

PACKAGE = Path(glmtts_batch.__file__).parent


def _error_classes() -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]


def test_no_module_but_errors_defines_a_public_exception_class() -> None:
    defined_elsewhere = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(b) for b in node.bases}
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    defined_elsewhere.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert defined_elsewhere == []


def test_every_error_has_its_exit_code_and_is_exported() -> None:
    classes = _error_classes()
    assert {c.__name__ for c in classes} >= {"LockedError", "PhonemeDictError", "RunError", "TaskError"}
    for cls in classes:
        assert issubclass(cls, errors.GlmttsBatchError)
        assert getattr(glmtts_batch, cls.__name__) is cls, cls.__name__
        assert cls.__name__ in glmtts_batch.__all__
        if issubclass(cls, errors.OutputWriteError):
            expected = errors.EXIT_OUTPUT_ERROR  # the run could not finish writing its outputs
        elif issubclass(cls, errors.RunError):
            expected = errors.EXIT_RUN_ERROR
        else:
            expected = errors.EXIT_TASKS_FAILED
        assert cls.exit_code == expected, cls.__name__


def test_interrupted_is_no_exception_a_task_could_swallow() -> None:
    """The CLI raises it from SIGINT/SIGTERM handlers: `except Exception` must let it through."""
    import signal

    assert issubclass(errors.Interrupted, BaseException) and not issubclass(errors.Interrupted, Exception)
    assert glmtts_batch.Interrupted is errors.Interrupted and "Interrupted" in glmtts_batch.__all__
    assert (errors.Interrupted(signal.SIGINT).exit_code, errors.Interrupted(signal.SIGTERM).exit_code) == (130, 143)
    assert str(errors.Interrupted(signal.SIGTERM)) == "SIGTERM"


def test_moved_classes_are_still_importable_where_they_were() -> None:
    from glmtts_batch.glmtts.text.g2p import PhonemeDictError
    from glmtts_batch.lock import LockedError

    assert LockedError is errors.LockedError and PhonemeDictError is errors.PhonemeDictError


def test_every_module_imports() -> None:
    # The error moves must not leave a dangling import anywhere in the package.
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="glmtts_batch."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


@pytest.mark.parametrize(
    "exc",
    [
        errors.LockedError("held"),
        errors.PhonemeDictError("bad line"),
        errors.TaskError("x"),
        errors.OutputWriteError("cannot write the manifest"),
        errors.TaskSourceError("the task source raised"),
    ],
)
def test_the_cli_exits_with_the_exceptions_own_code(exc: errors.GlmttsBatchError, monkeypatch, tmp_path: Path) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr("glmtts_batch.cli.run_batch", fail)
    monkeypatch.setattr("glmtts_batch.cli.check_tasks", fail)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"input_text": "a"}\n', encoding="utf-8")
    for args in (["run", str(tasks), "--no-progress"], ["check", str(tasks)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == exc.exit_code, (args, result.output)
        assert f"glmtts-batch: error: {exc}" in result.output


def test_a_custom_exit_code_is_honoured(monkeypatch, tmp_path: Path) -> None:
    class Busy(errors.RunError):
        exit_code = 75  # EX_TEMPFAIL

    def fail(*args: object, **kwargs: object) -> None:
        raise Busy("try later")

    monkeypatch.setattr("glmtts_batch.cli.run_batch", fail)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "t.jsonl")])
    assert result.exit_code == 75 and "try later" in result.output
    assert isinstance(main, click.Group)
