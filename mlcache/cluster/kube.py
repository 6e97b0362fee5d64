"""Reads of the live cluster as the JSON the API server sends: plain dicts, as `kubectl get -o json` shows.

They go through the kubernetes client's ApiClient (its kubeconfig loading, credentials and TLS) but
not through its typed API classes and models: importing those and turning every object into a model
and back cost more CPU than the rest of the program's run under `pulumi up` (1.2 s of about 3 s on
a 2-core machine; docs/design-decisions.md).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

# The API server's paths of the objects mlcache reads.
CLAIMS = "/api/v1/namespaces/{namespace}/persistentvolumeclaims"
VOLUME = "/api/v1/persistentvolumes/{name}"
VOLUMES = "/api/v1/persistentvolumes"
NODES = "/api/v1/nodes"
PODS = "/api/v1/pods"
NAMESPACED_PODS = "/api/v1/namespaces/{namespace}/pods"
POD = "/api/v1/namespaces/{namespace}/pods/{name}"
POD_LOG = "/api/v1/namespaces/{namespace}/pods/{name}/log"
CLAIM = "/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}"
EVENTS = "/api/v1/namespaces/{namespace}/events"
STORAGE_CLASS = "/apis/storage.k8s.io/v1/storageclasses/{name}"
STORAGE_CLASSES = "/apis/storage.k8s.io/v1/storageclasses"
JOB = "/apis/batch/v1/namespaces/{namespace}/jobs/{name}"
JOBS = "/apis/batch/v1/namespaces/{namespace}/jobs"
CAPACITIES = "/apis/storage.k8s.io/v1/csistoragecapacities"


def api_path(template: str, **names: str) -> str:
    """One of the paths above with its namespace and name filled in, each quoted as a path segment
    (a name from a stack's config never reaches another endpoint)."""
    return template.format(**{key: quote(value, safe="") for key, value in names.items()})


class Kube:
    """Requests on one ApiClient; `timeout` (seconds) bounds each."""

    def __init__(self, api: Any, timeout: float | None = None) -> None:
        self.api = api
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, accept: str = "application/json", **query: str) -> bytes:
        """The answer's body; the client's ApiException for any answer but 2xx, as its typed calls raise it."""
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        request = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()),
            header_params={"Accept": accept, **({"Content-Type": "application/json"} if body else {})},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=self.timeout)
        data = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
        return data

    def get(self, path: str, **query: str) -> dict[str, Any]:
        """The object (or list) at `path`."""
        return json.loads(self.request("GET", path, **query))

    def text(self, path: str, **query: str) -> str:
        """A plain-text answer (a pod's log)."""
        return self.request("GET", path, accept="text/plain", **query).decode(errors="replace")

    def delete(self, path: str, body: dict[str, Any] | None = None) -> None:
        """DELETE `path` (body: DeleteOptions, e.g. {"gracePeriodSeconds": 0})."""
        self.request("DELETE", path, body)

    def delete_if_present(self, path: str, body: dict[str, Any] | None = None) -> None:
        """delete(), where an object already gone (404) is no error."""
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        try:
            self.delete(path, body)
        except ApiException as err:
            if err.status != 404:
                raise

    def optional(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when there is none (404)."""
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

        try:
            return self.get(path)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def items(self, path: str, **query: str) -> list[dict[str, Any]]:
        """The items of the list at `path` (query: labelSelector, fieldSelector...)."""
        return self.get(path, **query).get("items") or []
