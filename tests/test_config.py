"""Each validation rule of the catalog and the stack settings, with a message naming field and value."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lockstep import config
from lockstep.errors import ConfigError
from tests.conftest import lockstep

STACKS = config.STACKS_DIR


@pytest.fixture
def stacks(tmp_path) -> Path:
    target = tmp_path / "stacks"
    shutil.copytree(STACKS, target)
    return target


def edit(path: Path, change) -> None:
    yaml = YAML()
    data = yaml.load(path.read_text())
    change(data)
    with path.open("w") as handle:
        yaml.dump(data, handle)


def stack_error(stacks: Path, change, stack: str = "local") -> str:
    edit(stacks / f"Pulumi.{stack}.yaml", lambda d: change(d["config"]))
    with pytest.raises(ConfigError) as caught:
        config.load_stack(stack, stacks)
    return str(caught.value)


def catalog_error(stacks: Path, change) -> str:
    edit(stacks / "catalog.yaml", change)
    with pytest.raises(ConfigError) as caught:
        config.load_catalog(stacks)
    return str(caught.value)


def test_all_shipped_stacks_are_valid():
    catalog = config.load_catalog()
    assert {"v1", "v2", "v3"} <= set(catalog.names)
    v1, v2, v3 = (catalog.get(v) for v in ("v1", "v2", "v3"))
    assert v1.dimension == v2.dimension != v3.dimension
    for stack in ("local", "dev", "staging", "prod"):
        settings = config.load_stack(stack)
        assert settings.pin in (settings.slots.blue, settings.slots.green)


def test_pin_must_be_in_a_slot(stacks):
    message = stack_error(stacks, lambda c: c.__setitem__("lockstep:pin", "v3"))
    assert "pin" in message and "'v3'" in message and "neither slot" in message


def test_pin_must_be_in_the_catalog(stacks):
    def change(c):
        c["lockstep:pin"] = "v9"
        c["lockstep:slots"]["green"] = "v9"

    message = stack_error(stacks, change)
    assert "'v9'" in message and "not in the catalog" in message and "v1, v2, v3" in message


def test_slots_must_differ(stacks):
    message = stack_error(stacks, lambda c: c["lockstep:slots"].__setitem__("green", "v1"))
    assert "slots" in message and "'v1'" in message


def test_retain_must_name_catalog_versions(stacks):
    message = stack_error(stacks, lambda c: c.__setitem__("lockstep:retain", ["v7"]))
    assert "retain" in message and "'v7'" in message


def test_index_prefix_must_be_a_valid_index_name(stacks):
    message = stack_error(stacks, lambda c: c["lockstep:opensearch"].__setitem__("indexPrefix", "Docs*"))
    assert "opensearch.indexPrefix" in message and "'Docs*'" in message


def test_space_type_must_be_supported_by_the_engine(stacks):
    edit(stacks / "catalog.yaml", lambda d: d["versions"]["v2"].__setitem__("spaceType", "l1"))
    message = stack_error(stacks, lambda c: None)
    assert "opensearch.engine" in message and "'l1'" in message and "v2" in message


def test_dimension_within_the_engine_limit(stacks):
    edit(stacks / "catalog.yaml", lambda d: d["versions"]["v1"].__setitem__("dimension", 20000))
    message = stack_error(stacks, lambda c: None)
    assert "dimension" in message and "20000" in message and "16000" in message


def test_dimension_must_be_positive(stacks):
    message = catalog_error(stacks, lambda d: d["versions"]["v3"].__setitem__("dimension", -4))
    assert "versions.v3.dimension" in message and "-4" in message and "> 0" in message


def test_sha256_must_be_64_hex(stacks):
    message = catalog_error(stacks, lambda d: d["versions"]["v1"].__setitem__("artifactSha256", "abc123"))
    assert "versions.v1.artifactSha256" in message and "'abc123'" in message and "64" in message


def test_floating_tags_are_not_versions(stacks):
    def change(d):
        d["versions"]["latest"] = dict(d["versions"]["v1"])

    message = catalog_error(stacks, change)
    assert "latest" in message and "floating tag" in message


def test_versions_that_differ_only_in_case_are_refused():
    entry = {"model": "m", "artifactSha256": "a" * 64, "dimension": 3, "spaceType": "l2"}
    with pytest.raises(ValueError, match="'v1' and 'V1' differ only in case and would share one index"):
        config.Catalog.model_validate({"model": "m", "versions": {"v1": entry, "V1": entry}})


def test_duplicate_versions_are_refused():
    with pytest.raises(ValueError, match="'v1' is listed twice"):
        config.Catalog.model_validate(
            {
                "model": "m",
                "versions": [
                    {"version": "v1", "model": "m", "artifactSha256": "a" * 64, "dimension": 3, "spaceType": "l2"},
                    {"version": "v1", "model": "m", "artifactSha256": "b" * 64, "dimension": 3, "spaceType": "l2"},
                ],
            }
        )


def test_unknown_setting_is_named(stacks):
    message = stack_error(stacks, lambda c: c["lockstep:check"].__setitem__("recalFloor", 0.5))
    assert "check.recalFloor" in message and "not a known setting" in message


def test_pulumi_config_values_validate_with_the_same_rules():
    catalog = config.load_catalog()
    base = {
        "pin": "v1",
        "slots": {"blue": "v1", "green": "v2"},
        "artifacts": {"bucket": "b-1"},
        "corpus": {"bucket": "c-1"},
    }
    assert config.settings_from_config("x", base, catalog).standby == "v2"
    with pytest.raises(ValueError, match="neither slot"):
        config.settings_from_config("x", {**base, "pin": "v3"}, catalog)


def run_cli(*args, stacks: Path):
    return lockstep(*args, env={"LOCKSTEP_STACKS_DIR": str(stacks)}, timeout=120)


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_cli_reports_a_malformed_stack_file_in_one_line(stacks):
    (stacks / "Pulumi.local.yaml").write_text("config:\n  lockstep:pin: [v1\n")
    before = snapshot(stacks)
    result = run_cli("validate", "--stack", "local", stacks=stacks)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Pulumi.local.yaml" in lines[0] and "not valid YAML" in lines[0]
    assert snapshot(stacks) == before


def test_validate_refuses_two_stacks_sharing_an_index_prefix_on_one_cluster(stacks):
    assert run_cli("validate", stacks=stacks).returncode == 0  # the repository's stacks: one cluster each
    (stacks / "Pulumi.staging.yaml").write_text(
        (stacks / "Pulumi.staging.yaml").read_text().replace("search-acme-staging-docs", "search-acme-prod-docs")
    )
    result = run_cli("validate", stacks=stacks)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lockstep: stacks prod and staging both use opensearch.indexPrefix docs on "
        "https://search-acme-prod-docs.eu-west-1.es.amazonaws.com: they would name the same indices; "
        "give one its own indexPrefix"
    ]
    assert run_cli("validate", "--stack", "staging", stacks=stacks).returncode == 0  # alone, nothing to compare


def test_validate_reads_a_stack_whose_name_has_a_dot(stacks):
    """Pulumi stack names may hold dots: `Pulumi.local.eu.yaml` is stack `local.eu`, not `local` again."""
    (stacks / "Pulumi.local.eu.yaml").write_text((stacks / "Pulumi.local.yaml").read_text())
    edit(stacks / "Pulumi.local.eu.yaml", lambda d: d["config"].__setitem__("lockstep:pin", "nope"))
    result = run_cli("validate", stacks=stacks)
    assert result.returncode == 2 and "Pulumi.local.eu.yaml" in result.stderr, result.stdout + result.stderr


def test_cli_reports_a_bad_catalog_field_in_one_line(stacks):
    edit(stacks / "catalog.yaml", lambda d: d["versions"]["v2"].__setitem__("dimension", 0))
    before = snapshot(stacks)
    result = run_cli("validate", stacks=stacks)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "catalog.yaml" in lines[0] and "versions.v2.dimension" in lines[0] and "0" in lines[0]
    assert snapshot(stacks) == before
