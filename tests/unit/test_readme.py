from __future__ import annotations

from libs.common.settings import Settings


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    with open("README.md", encoding="utf-8") as f:
        readme = f.read()
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in readme]
    assert not missing, f"README configuration table lacks: {missing}"
