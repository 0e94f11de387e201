"""Every experiment finalbn makes opens in the MLflow UI's model-training view and says what it
holds (`tracking.store`: the kind and Description tags, `ui_url`), on a real SQLite store; and the
names they rest on are the installed MLflow UI's own."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from conftest import empty_store
from finalbn.tracking import store

NOTE = "mlflow.note.content"


@pytest.fixture
def client(tmp_path, monkeypatch):
    """An empty SQLite store (MLFLOW_TRACKING_URI), and an MLflow client on it."""
    uri = f"sqlite:///{empty_store(tmp_path / 'mlflow.db')}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def test_setup_makes_the_experiment_with_its_kind_and_description(client, load):
    exp_id = store.setup(load(), "grid")
    tags = client.get_experiment(exp_id).tags
    assert client.get_experiment(exp_id).name == "finalbn/grid"
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags[NOTE] == store.DESCRIPTIONS["grid"]
    assert tags[NOTE].startswith("The factorial grid: one parent run per configuration")


def test_an_experiment_made_without_them_gets_them_and_an_edited_description_is_kept(client, load):
    old = client.create_experiment("finalbn/sensitivity")  # as finalbn made it before
    mine = client.create_experiment("finalbn/search", tags={NOTE: "my notes"})  # a Description edited in the UI
    assert store.setup(load(), "sensitivity") == old and store.setup(load(), "search") == mine
    sens, search = client.get_experiment(old).tags, client.get_experiment(mine).tags
    assert sens["mlflow.experimentKind"] == search["mlflow.experimentKind"] == "custom_model_development"
    assert sens[NOTE] == store.DESCRIPTIONS["sensitivity"] and "named by its setting" in sens[NOTE]
    assert search[NOTE] == "my notes"


def test_every_stage_says_what_its_runs_are_and_the_report_experiment_is_made_with_it(client):
    assert set(store.DESCRIPTIONS) == set(store.STAGES)
    assert all(len(text) > 40 for text in store.DESCRIPTIONS.values())
    exp_id = store.experiment_id("finalbn/report", create=True)  # the report's run makes its experiment
    tags = client.get_experiment(exp_id).tags
    assert tags[NOTE] == store.DESCRIPTIONS["report"] and tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.experimentKind" not in client.get_experiment(store.experiment_id("other", create=True)).tags


def test_the_ui_address_opens_the_grids_runs_in_the_model_training_view(client, load, tmp_path):
    cfg = load()
    assert store.ui_url(cfg, "127.0.0.1", 5000) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    exp_id = store.setup(cfg, "grid")
    assert store.ui_url(cfg, "localhost", 5001) == (
        f"http://localhost:5001/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    )
    nowhere = tmp_path / "none" / "mlflow.db"  # no store yet: the list, and nothing is created
    assert store.ui_url(cfg, uri=f"sqlite:///{nowhere}").endswith("/#/experiments?workflowType=machine_learning")
    assert not nowhere.exists()


def test_the_names_are_the_installed_mlflow_uis_own():
    """MLflow 3.17's bundle: the experiment kind tag and its model-training value, the workflow switch
    read from the address (`?workflowType=machine_learning`), the hash routes `#/experiments/<id>/<tab>`
    with the runs tab `runs`. An MLflow that renames one fails here, not in a browser."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in bundle.glob("main.*.js"))
    for fact in (
        '"mlflow.experimentKind"',
        'CUSTOM_MODEL_DEVELOPMENT="custom_model_development"',
        'MACHINE_LEARNING="machine_learning"',
        'get("workflowType")',
        '"/experiments/:experimentId/:tabName"',
        'Runs="runs"',
    ):
        assert fact in text, fact
    links = (Path(mlflow.__file__).parent / "tracking" / "_tracking_service" / "client.py").read_text(encoding="utf-8")
    assert '/#/experiments/{experiment_id}"' in links  # MLflow's own link to an experiment: a hash route
