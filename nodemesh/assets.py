"""Where the files nodemesh ships beside its code are: the Envoy bootstrap
template (`envoy/bootstrap.yaml`) and the examples (`examples/`).

Both live at the repository root, which is where a checkout (editable
install) finds them. A wheel carries copies under `nodemesh/_assets/`, made
by setup.py's build_py, because a site-packages install has no repository
root. Imports nothing else of nodemesh, so any layer may use it.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
# setup.py's build_py copies the assets here; absent in a checkout.
_INSTALLED = _PACKAGE_DIR / "_assets"
_CHECKOUT = _PACKAGE_DIR.parent


def asset_root() -> Path:
    """The directory holding `envoy/` and `examples/`: the installed copy if
    there is one, else the repository root of this checkout."""
    return _INSTALLED if _INSTALLED.is_dir() else _CHECKOUT


def envoy_bootstrap() -> Path:
    """The Envoy bootstrap template that the DaemonSet, compose and the demo run."""
    return asset_root() / "envoy" / "bootstrap.yaml"


def example_dir(name: str) -> Path:
    """`examples/<name>/`, e.g. `canary` (the article's traffic split)."""
    return asset_root() / "examples" / name
