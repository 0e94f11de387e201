"""A tracking server that did not answer through MLflow's retries: told from the exception chain
MLflow's REST client raises (`errors.server_unreachable`), and said by the command in one line.
The chains are built here from the real classes, as `mlflow.utils.rest_utils.http_request` and
requests raise them; the scale-out test (tests/test_scaleout.py) meets the real one."""

from __future__ import annotations

import socket

import pytest
import requests
import urllib3
from mlflow.exceptions import MlflowException
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError, ResponseError

from conftest import PARAMS
from finalbn import cli
from finalbn.infra.errors import server_unreachable

URL = "/api/2.0/mlflow/runs/create"


def _raised(last_try: Exception, wrap=requests.exceptions.ConnectionError) -> MlflowException:
    """The chain of an exhausted retry whose last try raised `last_try`: urllib3's MaxRetryError
    (`from` its reason), requests' `wrap` of it, and MLflow's MlflowException raised while handling
    that (rest_utils: `except Exception as e: raise MlflowException(...)`, no `from`)."""
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 5099)
    try:
        try:
            try:
                raise MaxRetryError(pool, URL, last_try) from last_try
            except MaxRetryError as e:
                raise wrap(e)  # noqa: B904 as requests' adapter does: in the except block, no `from`
        except requests.exceptions.RequestException as e:
            raise MlflowException(f"API request to http://127.0.0.1:5099{URL} failed with exception {e}")  # noqa: B904 (as MLflow)
    except MlflowException as exc:
        return exc


def _refused() -> Exception:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as e:
        try:
            raise NewConnectionError(None, f"Failed to establish a new connection: {e}") from e
        except NewConnectionError as outer:
            return outer


def test_connection_refused_names_the_server_and_the_tries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    assert server_unreachable(_raised(_refused())) == (
        "the tracking server http://127.0.0.1:5099 did not answer (connection refused; 2 tries, "
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1)"
    )
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # MLflow's default: 7 retries
    assert "(connection refused; 8 tries, MLFLOW_HTTP_REQUEST_MAX_RETRIES=7)" in server_unreachable(_raised(_refused()))


def test_a_timeout_and_a_failure_while_closing_the_run():
    timeout = _raised(ReadTimeoutError(None, URL, "Read timed out."), wrap=requests.exceptions.ReadTimeout)
    assert "did not answer (timed out;" in server_unreachable(timeout)
    try:  # cell_run ends the run FAILED on the way out: that request fails too, in the first one's context
        try:
            raise _raised(_refused())
        except MlflowException:
            raise MlflowException("API request to .../runs/update failed with exception ...")  # noqa: B904 (as MLflow)
    except MlflowException as closing:
        assert "connection refused" in server_unreachable(closing)
    gai = _raised(socket.gaierror(-2, "Name or service not known"))
    assert "(host name not resolved;" in server_unreachable(gai)


@pytest.mark.parametrize(
    "exc",
    [
        MlflowException("RESOURCE_DOES_NOT_EXIST: Run 'x' not found"),  # the server answered
        requests.exceptions.ConnectionError("not through MLflow"),  # someone else's request
        OSError(28, "No space left on device"),
        ValueError("x"),
    ],
    ids=["server-answered", "not-mlflow", "full-disk", "other"],
)
def test_anything_else_is_not_an_unreachable_server(exc):
    assert server_unreachable(exc) is None


def test_a_server_that_answered_5xx_every_try_is_not_unreachable():
    """urllib3 ends status retries with a MaxRetryError too; requests then raises RetryError."""
    assert (
        server_unreachable(_raised(ResponseError("too many 503 error responses"), wrap=requests.exceptions.RetryError))
        is None
    )


def test_the_command_says_it_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")

    def stage(cfg, args):
        raise _raised(_refused())

    monkeypatch.setattr(cli, "stage_main", lambda command: stage)
    assert cli.main(["grid", "--params", str(PARAMS)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "finalbn grid: error: the tracking server http://127.0.0.1:5099 did not answer (connection "
        "refused; 2 tries, MLFLOW_HTTP_REQUEST_MAX_RETRIES=1); finished runs are kept in the store; "
        "start it again and run the same command\n"
    )
