"""`runstream dashboards push`: upload the dashboards to a Grafana over its HTTP API (grafana-client),
into a folder, creating or updating each by uid. For users who do not use file provisioning."""

from __future__ import annotations

from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

from runstream.dashboards.build import generate

FOLDER_UID = "runstream"


def push(url: str, token: str, *, folder: str = "runstream") -> list[str]:
    """Create the folder if needed, then create or update every dashboard; returns the dashboard URLs."""
    api = GrafanaApi.from_url(url=url, credential=token)
    try:
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", None) != 404:
                raise
            api.folder.create_folder(folder, uid=FOLDER_UID)
        urls = []
        for d in generate().values():
            res = api.dashboard.update_dashboard({"dashboard": {**d, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
                                                  "message": "runstream dashboards push"})
            urls.append(url.rstrip("/") + res.get("url", f"/d/{d['uid']}"))
        return urls
    finally:
        api.client.s.close()  # the HTTP session's pooled connections
