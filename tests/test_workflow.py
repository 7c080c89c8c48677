"""The GitHub workflow: valid against the official workflow schema, and its zoo matrix built from the project's
own model list, one job per model, merged by pipeline.zoo."""

import json
import os
import subprocess
import sys

from ruamel.yaml import YAML

from mobile_vision_export.models import list_models
from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "parity.yml"


def _schema_check(path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_workflow_matches_the_schema_and_a_broken_one_does_not(tmp_path):
    assert _schema_check(WORKFLOW).returncode == 0
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:", 1))  # a misspelt key
    assert _schema_check(broken).returncode != 0


def test_zoo_matrix_is_every_zoo_model_and_the_summary_merges_them(tmp_path):
    jobs = YAML(typ="safe").load(WORKFLOW.read_text())["jobs"]
    for job in jobs.values():
        needs = job.get("needs", [])
        assert set([needs] if isinstance(needs, str) else needs) <= set(jobs)
    assert jobs["zoo"]["strategy"]["matrix"]["model"] == "${{ fromJSON(needs.tests.outputs.models) }}"
    assert jobs["tests"]["outputs"]["models"] == "${{ steps.models.outputs.models }}"
    step = next(s for s in jobs["tests"]["steps"] if s.get("id") == "models")
    output = tmp_path / "github_output"
    subprocess.run(["bash", "-c", step["run"]], cwd=ROOT, env=dict(os.environ, GITHUB_OUTPUT=str(output)), check=True)
    key, _, value = output.read_text().strip().partition("=")
    assert key == "models" and json.loads(value) == list_models()
    runs = [s.get("run", "") for s in jobs["zoo-summary"]["steps"]]
    assert ".venv/bin/python -m pipeline.zoo artifacts --out artifacts" in runs
    assert jobs["zoo-summary"]["if"] == "always()"  # the summary still shows the models that did export
