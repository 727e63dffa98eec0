"""One root per package for the errors raised on purpose: `RouterError` under
`router`, `BindError` under `binds` (which imports nothing of the router); each error
keeps the built-in base its callers catch."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import router
from binds.base import BindError
from router.errors import RouterError


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.")]
    # __main__ runs the CLI when imported.
    return [importlib.import_module(n) for n in names if not n.endswith("__main__")]


def _public_errors(package: str) -> list[type[BaseException]]:
    found = []
    for module in _modules(package):
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found.append(value)
    return found


def test_every_public_router_error_is_a_router_error() -> None:
    errors = _public_errors("router")
    names = {e.__name__ for e in errors}
    # The walk finds the errors (an empty walk would pass the check below).
    assert {"ConfigError", "JobError", "ApiError", "InstanceTaken", "MigrationError"} <= names
    assert [e.__qualname__ for e in errors if not issubclass(e, RouterError)] == []


def test_every_public_bind_error_is_a_bind_error() -> None:
    errors = _public_errors("binds")
    assert {"BindConfigError", "PduError", "FramingError", "EncodeError"} <= {
        e.__name__ for e in errors
    }
    assert [e.__qualname__ for e in errors if not issubclass(e, BindError)] == []


def test_the_two_roots_are_apart() -> None:
    """A transport's error is not a router error, nor the other way round."""
    assert not issubclass(BindError, RouterError)
    assert not issubclass(RouterError, BindError)


@pytest.mark.parametrize(
    ("module", "name", "builtin"),
    [
        ("router.policy.jobs", "JobError", ValueError),
        ("router.policy.compose", "TemplateError", ValueError),
        ("router.store.connections", "RedisUnavailable", RuntimeError),
        ("router.store.migrate", "MigrationError", RuntimeError),
        ("router.daemon.lease", "InstanceTaken", RuntimeError),
        ("router.store.connections", "ClusterUnreachable", ConnectionError),
        ("binds.smpp.pdu", "PduError", ValueError),
        ("binds.smpp.codec", "EncodeError", ValueError),
    ],
)
def test_errors_keep_the_base_their_callers_catch(
    module: str, name: str, builtin: type[Exception]
) -> None:
    error = getattr(importlib.import_module(module), name)
    if builtin is ConnectionError:
        # redis-py's ConnectionError: its retries and our outage loops wait it out.
        from redis.exceptions import ConnectionError as RedisConnectionError

        builtin = RedisConnectionError
    assert issubclass(error, builtin)


def test_a_job_error_is_caught_as_either() -> None:
    from router.policy.jobs import decode_job

    for caught in (ValueError, RouterError, router.JobError):
        with pytest.raises(caught):
            decode_job(b"\xc1", default_id="x")  # not msgpack


def test_the_public_surface() -> None:
    """`router` exports what an application uses, and each name is there."""
    assert {"Client", "ConfigError", "JobError", "RouterError", "Settings", "load_settings"} <= set(
        router.__all__
    )
    for name in router.__all__:
        assert getattr(router, name) is not None, name
    errors = [getattr(router, n) for n in router.__all__ if n.endswith(("Error", "Unavailable"))]
    assert errors and all(issubclass(e, RouterError) for e in errors)
