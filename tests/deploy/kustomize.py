"""A small Kustomize renderer for the features deploy/k8s/ uses, so the
manifests can be checked where no ``kubectl``/``kustomize`` binary exists.

Supported kustomization fields: ``resources`` (files and directories),
``namespace``, ``images`` (name, newName, newTag), ``replicas`` and
``patches`` given by ``path`` (strategic merge patches that name their target
by apiVersion, kind and metadata.name). Anything else raises
:class:`Unsupported`, so a new feature in the manifests cannot be silently
ignored here: extend this module (``test_renderer_matches_kubectl`` compares
it with ``kubectl kustomize`` where kubectl is installed).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches",
                        "replicas"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
#: Lists that strategic merge patches merge item by item, by this key.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath"}
POD_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def load_documents(path: Path) -> list[Manifest]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for d in docs:
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping per YAML document, got {d!r}")
    return docs


def kustomization(directory: Path) -> Manifest:
    path = directory / "kustomization.yaml"
    docs = load_documents(path)
    if len(docs) != 1:
        raise ValueError(f"{path}: expected one document")
    unknown = sorted(set(docs[0]) - KUSTOMIZATION_FIELDS)
    if unknown:
        raise Unsupported(f"{path}: fields {unknown} are not supported by "
                          "tests/deploy/kustomize.py")
    return docs[0]


def render(directory: Path) -> list[Manifest]:
    """The manifests ``kustomize build directory`` would produce."""
    kust = kustomization(directory)
    objects: list[Manifest] = []
    for resource in kust.get("resources", []):
        path = directory / resource
        objects += render(path) if path.is_dir() else load_documents(path)
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise Unsupported(f"{directory}: only patches given by 'path' are supported: {patch}")
        for doc in load_documents(directory / patch["path"]):
            merge(find(objects, doc), doc)
    if "namespace" in kust:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        _set_image(objects, image)
    for replicas in kust.get("replicas", []):
        target = [o for o in objects if o["metadata"]["name"] == replicas["name"]
                  and o["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}]
        if len(target) != 1:
            raise ValueError(f"replicas: no single workload named {replicas['name']!r}")
        target[0]["spec"]["replicas"] = replicas["count"]
    return objects


def key(obj: Manifest) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def find(objects: list[Manifest], patch: Manifest) -> Manifest:
    found = [o for o in objects if key(o) == key(patch)]
    if len(found) != 1:
        raise ValueError(f"patch target {key(patch)} matches {len(found)} resources")
    return found[0]


def merge(target: Manifest, patch: Manifest) -> None:
    """Strategic merge: maps merge, ``null`` deletes, the lists of
    :data:`MERGE_KEYS` merge by key, other lists are replaced."""
    for name, value in patch.items():
        if name.startswith("$"):
            raise Unsupported(f"patch directive {name} is not supported")
        if value is None:
            target.pop(name, None)
        elif isinstance(value, dict) and isinstance(target.get(name), dict):
            merge(target[name], value)
        elif isinstance(value, list) and name in MERGE_KEYS and isinstance(target.get(name), list):
            by = MERGE_KEYS[name]
            current = {item[by]: item for item in target[name]}
            for item in value:
                if item[by] in current:
                    merge(current[item[by]], item)
                else:
                    target[name].append(copy.deepcopy(item))
        else:
            target[name] = copy.deepcopy(value)


def pod_spec(obj: Manifest) -> Manifest | None:
    if obj["kind"] in POD_WORKLOADS:
        spec: Manifest = obj["spec"]["template"]["spec"]
        return spec
    if obj["kind"] == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def containers(obj: Manifest) -> list[Manifest]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _set_image(objects: list[Manifest], image: Manifest) -> None:
    if "digest" in image:
        raise Unsupported("images: digest is not supported")
    for obj in objects:
        for container in containers(obj):
            ref: str = container["image"]
            name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
            if name == image["name"]:
                new_tag = image.get("newTag", tag)
                new_name = image.get("newName", name)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
