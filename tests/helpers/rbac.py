"""RBAC rules as sets of (API group, resource, verb), to compare a Role with what code requests."""

from __future__ import annotations

from typing import Any


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) a Role or ClusterRole grants, one tuple per combination."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
