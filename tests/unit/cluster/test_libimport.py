"""kubernetes-asyncio imported without its API and model classes (adapters/kubernetes/libimport.py).

Each check runs in a fresh interpreter: the test process has the whole library imported already,
and there the shim rightly leaves it as it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agent import make_tls
from tests.processes import REPO, clean_env

_PRELUDE = """
import asyncio, sys
from adapters.kubernetes.libimport import import_light
LIBRARY = ("kubernetes_asyncio.client.api.", "kubernetes_asyncio.client.models.")
def classes():
    return sorted(m for m in sys.modules if m.startswith(LIBRARY))
"""


def _python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + code],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _kubeconfig(path: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t0k3n"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))
    return path


def test_loading_a_kubeconfig_imports_no_api_or_model_class(tmp_path: Path) -> None:
    """winspec's client from a kubeconfig comes with none of the library's API or model modules."""
    out = _python(f"""
from adapters.kubernetes.client import load_api_client
async def main():
    api = await load_api_client({str(_kubeconfig(tmp_path / "config"))!r})
    token = (await api.configuration.auth_settings())["BearerToken"]["value"]
    print(type(api).__name__, api.configuration.host, token)
    await api.close()
asyncio.run(main())
print(classes())
""")
    assert out.splitlines() == ["ApiClient https://127.0.0.1:6443 Bearer t0k3n", "[]"]


def test_in_cluster_loading_imports_no_kubeconfig_loader(tmp_path: Path) -> None:
    """The in-cluster client comes without the kubeconfig loader or a YAML parser."""
    (tmp_path / "token").write_text("s3cr3t")
    make_tls(tmp_path)  # writes the ca.crt the service account directory holds
    out = _python(f"""
import os
os.environ.pop("KUBECONFIG", None)
os.environ["HOME"] = {str(tmp_path)!r}
os.environ["KUBERNETES_SERVICE_HOST"] = "10.0.0.1"
os.environ["KUBERNETES_SERVICE_PORT"] = "443"
from adapters.kubernetes.client import load_api_client
async def main():
    api = await load_api_client(service_account_dir={str(tmp_path)!r})
    token = (await api.configuration.auth_settings())["BearerToken"]["value"]
    print(type(api).__name__, api.configuration.host, token)
    await api.close()
asyncio.run(main())
print(classes(), sorted(m for m in ("yaml", "kubernetes_asyncio.config.kube_config")
      if m in sys.modules))
""")
    assert out.splitlines() == ["ApiClient https://10.0.0.1:443 Bearer s3cr3t", "[] []"]


def test_everything_else_the_library_offers_still_imports() -> None:
    """After the shim, API classes, models, the version and submodules import as they always do."""
    out = _python("""
import_light()
import kubernetes_asyncio
from kubernetes_asyncio.client.models import V1ObjectMeta
print(V1ObjectMeta(name="a").name, classes())
from kubernetes_asyncio import client, watch
print(client.CustomObjectsApi.__name__, watch.Watch.__name__, kubernetes_asyncio.__version__)
print("kubernetes_asyncio.client.api.custom_objects_api" in classes())
from kubernetes_asyncio import config
print(config.load_kube_config.__module__, config.load_config.__name__)
""")
    first, second, third, fourth = out.splitlines()
    assert first == "a ['kubernetes_asyncio.client.models.v1_object_meta']"
    assert second.startswith("CustomObjectsApi Watch ")
    assert second.split()[2][0].isdigit()
    assert third == "True"
    assert fourth == "kubernetes_asyncio.config.kube_config load_config"


def test_a_library_imported_already_is_left_as_it_is() -> None:
    """Where kubernetes-asyncio was imported the usual way, the shim changes nothing."""
    out = _python("""
import kubernetes_asyncio.client as before
import_light()
import kubernetes_asyncio.client as after
print(before is after, "__getattr__" in vars(after), len(classes()) > 100)
""")
    assert out.split() == ["True", "False", "True"]
