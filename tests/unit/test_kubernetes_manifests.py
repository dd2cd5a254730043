"""deploy/kubernetes/: every manifest, and base + overlay composed as kustomize composes them,
checked against the official ``kubernetes`` client's models.

Two checks per object, because the client alone is lenient: its deserializer drops keys it does
not know and coerces ``"80"`` to ``80``.  ``strict`` walks the document beside the models'
``openapi_types`` and fails on an unknown field or a value of the wrong type (the mistakes
``kubectl apply --validate`` would catch); then ``ApiClient.deserialize`` builds the models
with client-side validation on, which fails on a missing required field.  On top, the checks a
schema cannot make: selectors that select the pods, mounts of volumes that exist, the keys file
inside the Secret's mount.

The composition is done here by a small composer of the kustomize features the tree uses
(resources, labels, images, RFC 6902 patches with a target; anything else is an error, so it
never silently differs); where ``kubectl`` is installed, its ``kubectl kustomize`` output must
equal ours.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

# In the test extras (pyproject.toml), so `make test` installs it: a missing client fails here.
from kubernetes import client as k8s

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
BASE = ROOT / "base"
GPU = ROOT / "overlays" / "gpu"
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (str, int, float, bool, dict, list),  # IntOrString, RawExtension
    "datetime": (str,),
    "date": (str,),
}


# --- strict validation against the client's models ----------------------------------------------


class Invalid(AssertionError):
    pass


def model_name(doc: dict[str, Any]) -> str:
    """``apps/v1`` + ``StatefulSet`` -> ``V1StatefulSet`` (the client's class name)."""
    version = str(doc["apiVersion"]).rsplit("/", 1)[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def strict(value: Any, type_name: str, where: str) -> None:
    """Fail on any field the model lacks and any value of another type than the model's."""
    # Client 37 spells them List[X] and Dict[str, X]; older ones list[X] and dict(str, X).
    listed = re.fullmatch(r"[Ll]ist\[(.+)\]", type_name)
    if listed:
        if not isinstance(value, list):
            raise Invalid(f"{where}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            strict(item, listed.group(1), f"{where}[{i}]")
        return
    mapped = re.fullmatch(r"(?:Dict\[str, (.+)\]|dict\(str, (.+)\))", type_name)
    if mapped:
        if not isinstance(value, dict):
            raise Invalid(f"{where}: expected a mapping, got {type(value).__name__}")
        for key, item in value.items():
            strict(item, mapped.group(1) or mapped.group(2), f"{where}.{key}")
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(value, bool):
            ok = False
        if not ok:
            raise Invalid(f"{where}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        raise Invalid(f"{where}: expected a {type_name} mapping, got {type(value).__name__}")
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            raise Invalid(f"{where}: {type_name} has no field {key!r}")
        if item is not None:
            strict(item, model.openapi_types[fields[key]], f"{where}.{key}")


class _Response:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.data = json.dumps(doc)


def validate(doc: dict[str, Any]) -> Any:
    """The object as the client's model, after the strict walk; raises on any mistake."""
    name = model_name(doc)
    where = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
    strict(doc, name, where)
    model = getattr(k8s, name)
    if hasattr(model, "model_validate"):
        # Client 36 and later: pydantic models (extra fields forbidden, required ones required).
        return model.model_validate(doc)
    api = k8s.ApiClient()  # older: client-side validation in the models' setters
    assert api.configuration.client_side_validation
    return api.deserialize(_Response(doc), name)


# --- a composer of the kustomize features used here ----------------------------------------------

KNOWN_KEYS = {"apiVersion", "kind", "resources", "labels", "images", "patches"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def compose(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize DIRECTORY`` prints, for the features this tree uses."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN_KEYS
    assert not unknown, f"{directory}: the test's composer does not know {sorted(unknown)}"
    objects: list[dict[str, Any]] = []
    for entry in k.get("resources", []):
        target = directory / entry
        objects += compose(target) if target.is_dir() else load_docs(target)
    for spec in k.get("labels", []):
        assert set(spec) == {"pairs"}, f"labels: only plain pairs are composed here: {spec}"
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(spec["pairs"])
    for image in k.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                _retag(container, image)
    for patch in k.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(ops, list), "only RFC 6902 patches are composed here"
        hits = [o for o in objects if _targets(o, patch["target"])]
        assert hits, f"patch {patch['path']}: its target matches nothing"
        for obj in hits:
            for op in ops:
                json_patch(obj, op)
    return objects


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _retag(container: dict[str, Any], image: dict[str, str]) -> None:
    name, _, tag = container["image"].partition(":")
    if name != image["name"]:
        return
    name = image.get("newName", name)
    tag = image.get("newTag", tag)
    container["image"] = f"{name}:{tag}" if tag else name


def _targets(obj: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        target.get("group", group) == group
        and target.get("version", version) == version
        and target.get("kind", obj["kind"]) == obj["kind"]
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
    )


def json_patch(doc: Any, op: dict[str, Any]) -> None:
    """One RFC 6902 ``add``, ``replace`` or ``remove``."""
    *parents, last = [
        p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")
    ]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if kind == "add":
            node.insert(index, copy.deepcopy(op["value"]))
        elif kind == "replace":
            node[index] = copy.deepcopy(op["value"])
        else:
            assert kind == "remove", kind
            del node[index]
        return
    if kind in ("replace", "remove"):
        assert last in node, f"{op['op']} {op['path']}: no such member"
    if kind == "remove":
        del node[last]
    else:
        assert kind in ("add", "replace"), kind
        node[last] = copy.deepcopy(op["value"])


def _canonical(objects: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


# --- the tests -----------------------------------------------------------------------------------


def manifests() -> list[Path]:
    """Every YAML file that holds Kubernetes objects (not kustomizations, not patches)."""
    found = []
    for path in sorted(ROOT.rglob("*.yaml")):
        docs = load_docs(path)
        objects = docs and all(isinstance(d, dict) and "kind" in d for d in docs)
        if objects and all(d["kind"] != "Kustomization" for d in docs):
            found.append(path)
    return found


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


class TestEveryManifest:
    def test_the_tree_has_the_objects_the_docs_name(self) -> None:
        """StatefulSet, both Services, the models ConfigMap and the example Secret are there."""
        names = {(d["kind"], d["metadata"]["name"]) for p in manifests() for d in load_docs(p)}
        assert {
            ("StatefulSet", "modelrunner"),
            ("Service", "modelrunner"),
            ("Service", "modelrunner-pods"),
            ("ConfigMap", "modelrunner-models"),
            ("Secret", "modelrunner-api-keys"),
        } <= names

    @pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(ROOT)))
    def test_loads_into_the_client_models(self, path: Path) -> None:
        """No unknown field, no wrong type, no missing required field."""
        for doc in load_docs(path):
            model = validate(doc)
            assert type(model).__name__ == model_name(doc)


class TestTheValidatorBites:
    """The check above would catch the mistakes it exists for."""

    def _statefulset(self) -> dict[str, Any]:
        return next(d for d in load_docs(BASE / "statefulset.yaml") if d["kind"] == "StatefulSet")

    def test_a_misspelled_field_fails(self) -> None:
        doc = self._statefulset()
        container = doc["spec"]["template"]["spec"]["containers"][0]
        container["readinesProbe"] = container.pop("readinessProbe")
        with pytest.raises(Invalid, match="V1Container has no field 'readinesProbe'"):
            validate(doc)

    def test_a_wrong_type_fails(self) -> None:
        doc = self._statefulset()
        doc["spec"]["replicas"] = "2"
        with pytest.raises(Invalid, match=r"spec\.replicas: expected int, got str"):
            validate(doc)

    def test_a_missing_required_field_fails(self) -> None:
        doc = self._statefulset()
        del doc["spec"]["template"]["spec"]["containers"][0]["name"]
        # pydantic's ValidationError is a ValueError, as the older clients' setters raise.
        with pytest.raises(ValueError, match=r"(?s)name.*(Field required|must not be `None`)"):
            validate(doc)


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (sts,) = by_kind(objects, "StatefulSet")
    return sts


@pytest.fixture
def base() -> list[dict[str, Any]]:
    return compose(BASE)


@pytest.fixture
def gpu() -> list[dict[str, Any]]:
    return compose(GPU)


class TestComposedBase:
    @pytest.fixture
    def objects(self, base: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return base

    def test_every_object_validates(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            validate(obj)

    def test_the_services_select_the_pods_on_their_named_port(
        self, objects: list[dict[str, Any]]
    ) -> None:
        sts = _pod(objects)
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        ports = {
            p["name"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for svc in by_kind(objects, "Service"):
            assert svc["spec"]["selector"].items() <= pod_labels.items()
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports
        assert sts["spec"]["serviceName"] in {
            s["metadata"]["name"] for s in by_kind(objects, "Service")
        }

    def test_every_mount_names_a_volume_and_the_keys_file_is_in_the_secret(
        self, objects: list[dict[str, Any]]
    ) -> None:
        sts = _pod(objects)
        spec = sts["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
        for container in [*spec["initContainers"], *spec["containers"]]:
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes.keys() | claims, mount
        (server,) = spec["containers"]
        env = {e["name"]: e for e in server["env"]}
        keys_file = Path(env["MODEL_RUNNER_API_KEYS_FILE"]["value"])
        mount = next(m for m in server["volumeMounts"] if m["name"] == "api-keys")
        secret = volumes["api-keys"]["secret"]
        assert keys_file.parent == Path(mount["mountPath"])
        assert mount["readOnly"] is True
        assert keys_file.name in {i["path"] for i in secret["items"]}
        example = load_docs(ROOT / "examples" / "api-keys-secret.yaml")[0]
        assert secret["secretName"] == example["metadata"]["name"]
        assert {i["key"] for i in secret["items"]} <= example["stringData"].keys()

    def test_the_init_container_reads_the_models_config_map(
        self, objects: list[dict[str, Any]]
    ) -> None:
        (cm,) = by_kind(objects, "ConfigMap")
        (init,) = _pod(objects)["spec"]["template"]["spec"]["initContainers"]
        ref = next(e for e in init["env"] if e["name"] == "MODELS")["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == cm["metadata"]["name"]
        assert ref["key"] in cm["data"]
        assert "modelrunner pull" in init["command"][-1]

    def test_probes_ask_the_daemon_over_its_socket(self, objects: list[dict[str, Any]]) -> None:
        (server,) = _pod(objects)["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["exec"]["command"] == ["modelrunner", "status"]

    def test_images_are_set_by_the_kustomization(self, objects: list[dict[str, Any]]) -> None:
        sts = _pod(objects)
        images = {c["image"] for c in _containers(sts)}
        assert images == {"registry.example.com/modelrunner:cpu"}


class TestComposedGpuOverlay:
    @pytest.fixture
    def objects(self, gpu: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return gpu

    def test_every_object_validates(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            validate(obj)

    def test_one_gpu_on_gpu_nodes_with_the_cuda_image(self, objects: list[dict[str, Any]]) -> None:
        spec = _pod(objects)["spec"]["template"]["spec"]
        (server,) = spec["containers"]
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        assert {c["image"] for c in _containers(_pod(objects))} == {
            "registry.example.com/modelrunner:cuda"
        }

    def test_the_base_is_left_as_it_was(self) -> None:
        """Composing the overlay copies; the base's own composition is unchanged."""
        spec = _pod(compose(BASE))["spec"]["template"]["spec"]
        assert "nodeSelector" not in spec
        assert "nvidia.com/gpu" not in str(spec)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [BASE, GPU], ids=["base", "gpu"])
def test_our_composition_is_kubectl_kustomize(directory: Path) -> None:
    """Where kubectl exists, the real kustomize composes exactly what the composer above does."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = _canonical([d for d in yaml.safe_load_all(out) if d])
    assert theirs == _canonical(compose(directory))
    for obj in theirs.values():
        validate(obj)
