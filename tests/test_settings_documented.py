"""Every setting is documented in the README (datasette's trick: a test, not a promise)."""

from pathlib import Path

from app.core.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def env_names(field_name: str) -> list[str]:
    field = Settings.model_fields[field_name]
    if field.validation_alias is not None:
        return list(field.validation_alias.choices)
    return [f"SUBNETSCOPE_{field_name.upper()}"]


def test_every_setting_has_a_description():
    missing = [n for n, f in Settings.model_fields.items() if not f.description]
    assert missing == []


def test_every_setting_is_in_the_readme_table():
    table_rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    undocumented = [
        name
        for name in Settings.model_fields
        if not any(f"`{env_names(name)[0]}`" in row for row in table_rows)
    ]
    assert undocumented == [], f"add these to README's settings table: {undocumented}"
