"""MLflow's model registry on runstream: registered models, their versions, stages, aliases and tags.

The registry is governance state: every change is a control event (``registered_model`` or ``model_version``, the
whole object as it now is) with its audit record in the model's project, so the trail says who registered, promoted
or deleted what, and a version names the run (and the run's project) it came from. Every mlflow replica follows the
control topic and answers from the state it has applied; a change is answered once Kafka acknowledged it.

Access: a registered model belongs to a project, the one its creator's token is limited to (``default`` for a
token over every project). Reading it takes read or ingest on that project, changing it ingest. A version made from
a stored run also needs read on the run's project.

Versions are numbered by the replica that makes them; two replicas making versions of one model at the same instant
could both number the next version alike (one mlflow replica per stack, the default, cannot).
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

from runstream.mlflow.protocol import MlflowError, as_list, next_page, page_offset
from runstream.server.auth import Token, authorize
from runstream.v1 import ingest_pb2
from runstream.wire.mlflow import DEFAULT_PROJECT
from runstream.wire.search import Order, matches, parse_filter, parse_order_by

STAGES = {s.lower(): s for s in ("None", "Staging", "Production", "Archived")}
MODEL_ATTRS = {"name": "string", "creation_timestamp": "number", "last_updated_timestamp": "number",
               "timestamp": "number"}
VERSION_ATTRS = {"name": "string", "run_id": "string", "source_path": "string", "version_number": "number",
                 "model_id": "string", "creation_timestamp": "number", "last_updated_timestamp": "number",
                 "timestamp": "number"}
# MLflow's limits and defaults for the two searches.
MODELS_DEFAULT, MODELS_MAX = 100, 1000
VERSIONS_DEFAULT, VERSIONS_MAX = 10_000, 200_000
CAUGHT_UP_S = 30.0


@dataclass
class Model:
    rec: ingest_pb2.RegisteredModelRecord
    versions: dict[int, ingest_pb2.ModelVersionRecord] = field(default_factory=dict)

    def live(self) -> list[ingest_pb2.ModelVersionRecord]:
        return [v for _, v in sorted(self.versions.items()) if not v.deleted]


def _now() -> int:
    return int(time.time() * 1000)


def _pairs(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in items or []}


class Registry:
    """The registry's state, applied from control events, and the REST handlers over it. ``api`` is the MLflow
    role's handler object: its publishing, run lookup and error helpers are shared."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.models: dict[str, Model] = {}   # by model key
        self.names: dict[str, str] = {}      # live name -> model key
        self.caught_up: asyncio.Event | None = None  # the follower's: set once the registry's history is applied

    # ---- state ----

    def apply(self, ev: ingest_pb2.ControlEvent) -> None:
        if ev.HasField("registered_model"):
            rec = ev.registered_model
            old = self.models.get(rec.model_key)
            if old is not None and self.names.get(old.rec.name) == rec.model_key:
                del self.names[old.rec.name]
            if old is None:
                self.models[rec.model_key] = Model(rec)
            else:
                old.rec = rec
            if not rec.deleted:
                self.names[rec.name] = rec.model_key
        elif ev.HasField("model_version"):
            mv = ev.model_version
            model = self.models.get(mv.model_key)
            if model is not None:
                model.versions[mv.version] = mv

    async def _ready(self) -> None:
        if self.caught_up is not None and not self.caught_up.is_set():
            try:
                await asyncio.wait_for(self.caught_up.wait(), CAUGHT_UP_S)
            except TimeoutError:
                raise MlflowError("TEMPORARILY_UNAVAILABLE", "the model registry is still reading its history from "
                                                             "Kafka; retry in a moment") from None

    def _visible(self, token: Token) -> list[Model]:
        """The live models whose project the token may read (or write to)."""
        return [m for m in map(self.models.__getitem__, self.names.values())
                if token.allows(m.rec.project, "read") or token.allows(m.rec.project, "ingest")]

    async def _model(self, given: Any, token: Token, scope: str = "read") -> Model:
        await self._ready()
        name = _name(given)
        key = self.names.get(name)
        model = self.models.get(key) if key else None
        if model is None or not (token.allows(model.rec.project, "read") or token.allows(model.rec.project, "ingest")):
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found")
        if scope != "read":
            authorize(token, model.rec.project, scope)
        return model

    async def _version(self, body: dict[str, Any], token: Token, scope: str = "read") -> tuple[Model, ingest_pb2.ModelVersionRecord]:
        model = await self._model(body.get("name"), token, scope)
        number = _version_number(body.get("version"))
        mv = model.versions.get(number)
        if mv is None or mv.deleted:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Model Version (name={model.rec.name}, version={number}) not found")
        return model, mv

    async def _publish(self, token: Token, action: str, **body: Any) -> None:
        ev = ingest_pb2.ControlEvent(actor=f"token:{token.name}", at_ms=_now(), action=action, **body)
        await self.api.publish_control(ev)

    async def _save_model(self, token: Token, action: str, rec: ingest_pb2.RegisteredModelRecord) -> None:
        await self._publish(token, action, registered_model=rec)

    async def _save_version(self, token: Token, action: str, mv: ingest_pb2.ModelVersionRecord,
                            model: ingest_pb2.RegisteredModelRecord | None = None) -> None:
        await self._publish(token, action, model_version=mv)
        if model is not None:  # the change also moves the registered model's last-updated time
            await self._save_model(token, "registered_model.update", model)

    # ---- JSON as MLflow writes it ----

    def version_json(self, model: Model, mv: ingest_pb2.ModelVersionRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": model.rec.name, "version": str(mv.version), "creation_timestamp": mv.created_ms,
            "last_updated_timestamp": mv.updated_ms, "user_id": mv.user_id, "current_stage": mv.stage or "None",
            "description": mv.description, "source": mv.source, "run_id": mv.run_id, "status": "READY",
            "tags": [{"key": k, "value": v} for k, v in sorted(mv.tags.items())],
            "aliases": sorted(a for a, v in model.rec.aliases.items() if v == mv.version)}
        if mv.run_link:
            out["run_link"] = mv.run_link
        if mv.model_id:
            out["model_id"] = mv.model_id
        return out

    def model_json(self, model: Model) -> dict[str, Any]:
        latest: dict[str, ingest_pb2.ModelVersionRecord] = {}
        for mv in model.live():
            latest[mv.stage or "None"] = mv
        rec = model.rec
        return {"name": rec.name, "creation_timestamp": rec.created_ms, "last_updated_timestamp": rec.updated_ms,
                "user_id": rec.user_id, "description": rec.description,
                "latest_versions": [self.version_json(model, mv) for mv in sorted(latest.values(), key=lambda v: v.version)],
                "tags": [{"key": k, "value": v} for k, v in sorted(rec.tags.items())],
                "aliases": [{"alias": a, "version": str(v)} for a, v in sorted(rec.aliases.items())]}

    # ---- registered models ----

    async def create_model(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        await self._ready()
        name = _name(body.get("name"))
        if name in self.names:
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Registered Model (name={name}) already exists.")
        project = _project_for(token)
        authorize(token, project, "ingest")
        now = _now()
        rec = ingest_pb2.RegisteredModelRecord(model_key=uuid.uuid4().hex, name=name, project=project,
                                               description=_text(body, "description"), tags=_tags(body),
                                               created_ms=now, updated_ms=now, user_id=token.name)
        await self._save_model(token, "registered_model.create", rec)
        return {"registered_model": self.model_json(self.models[rec.model_key])}

    async def get_model(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return {"registered_model": self.model_json(await self._model(body.get("name"), token))}

    async def _change_model(self, body: dict[str, Any], token: Token, action: str, **changes: Any) -> Model:
        model = await self._model(body.get("name"), token, "ingest")
        rec = ingest_pb2.RegisteredModelRecord()
        rec.CopyFrom(model.rec)
        for k, v in changes.items():
            setattr(rec, k, v)
        rec.updated_ms = _now()
        await self._save_model(token, action, rec)
        return self.models[rec.model_key]

    async def rename_model(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        new_name = _name(body.get("new_name"), "new_name")
        await self._model(body.get("name"), token, "ingest")
        if new_name in self.names:
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Registered Model (name={new_name}) already exists.")
        return {"registered_model": self.model_json(await self._change_model(body, token, "registered_model.rename",
                                                                             name=new_name))}

    async def update_model(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._change_model(body, token, "registered_model.update", description=_text(body, "description"))
        return {"registered_model": self.model_json(model)}

    async def delete_model(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        await self._change_model(body, token, "registered_model.delete", deleted=True)
        return {}

    async def search_models(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        await self._ready()
        conds = parse_filter(body.get("filter"), attrs=MODEL_ATTRS)
        orders = parse_order_by(as_list(body.get("order_by")), attrs=MODEL_ATTRS)
        limit = _limit(body, MODELS_DEFAULT, MODELS_MAX)
        found = []
        for model in self._visible(token):
            rec = model.rec
            attrs = {"name": rec.name, "creation_timestamp": rec.created_ms, "last_updated_timestamp": rec.updated_ms,
                     "timestamp": rec.updated_ms}
            if matches(conds, attrs, dict(rec.tags), absent_differs=True):
                found.append((attrs, model))
        by_name = [Order("attr", "name", True)]
        found = _ordered(found, orders, default=by_name, ties=by_name)
        return _paged(body, [self.model_json(m) for _, m in found], limit, "registered_models")

    async def latest_versions(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._model(body.get("name"), token)
        stages = {_stage(s) for s in as_list(body.get("stages"))}
        latest: dict[str, ingest_pb2.ModelVersionRecord] = {}
        for mv in model.live():
            if not stages or (mv.stage or "None") in stages:
                latest[mv.stage or "None"] = mv
        return {"model_versions": [self.version_json(model, mv) for mv in sorted(latest.values(), key=lambda v: v.version)]}

    async def set_model_tag(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._model(body.get("name"), token, "ingest")
        key = _key(body)
        rec = ingest_pb2.RegisteredModelRecord()
        rec.CopyFrom(model.rec)
        rec.tags[key] = _text(body, "value")
        await self._save_model(token, "registered_model.set_tag", rec)
        return {}

    async def delete_model_tag(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._model(body.get("name"), token, "ingest")
        key = _key(body)
        if key in model.rec.tags:
            rec = ingest_pb2.RegisteredModelRecord()
            rec.CopyFrom(model.rec)
            del rec.tags[key]
            await self._save_model(token, "registered_model.delete_tag", rec)
        return {}

    async def set_alias(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model, mv = await self._version(body, token, "ingest")
        alias = _alias(body.get("alias"))
        rec = ingest_pb2.RegisteredModelRecord()
        rec.CopyFrom(model.rec)
        rec.aliases[alias] = mv.version
        await self._save_model(token, "registered_model.set_alias", rec)
        return {}

    async def delete_alias(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._model(body.get("name"), token, "ingest")
        alias = _alias(body.get("alias"))
        if alias in model.rec.aliases:
            rec = ingest_pb2.RegisteredModelRecord()
            rec.CopyFrom(model.rec)
            del rec.aliases[alias]
            await self._save_model(token, "registered_model.delete_alias", rec)
        return {}

    async def version_by_alias(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._model(body.get("name"), token)
        alias = _alias(body.get("alias"))
        if alias not in model.rec.aliases:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Registered model alias {alias} not found.")
        body = {"name": model.rec.name, "version": model.rec.aliases[alias]}
        return {"model_version": self.version_json(*await self._version(body, token))}

    # ---- model versions ----

    async def create_version(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model = await self._model(body.get("name"), token, "ingest")
        source = _text(body, "source")
        if not source:
            raise MlflowError("INVALID_PARAMETER_VALUE", "Missing value for required parameter 'source'.")
        run_id, model_id = _text(body, "run_id"), _text(body, "model_id")
        checked_source(source, "model_id" if model_id else "run_id")
        storage = source
        if source.startswith("models:/"):
            storage, found_run = await self._resolve(source, token)
            run_id = run_id or found_run
        run_project = await self.api.run_project_for_lineage(run_id, token) if run_id else ""
        now = _now()
        number = max(model.versions, default=0) + 1  # numbers are never reused, deleted versions included
        mv = ingest_pb2.ModelVersionRecord(
            model_key=model.rec.model_key, project=model.rec.project, version=number, source=source,
            storage_location=storage, run_id=run_id, run_project=run_project, run_link=_text(body, "run_link"),
            model_id=model_id, description=_text(body, "description"), tags=_tags(body), stage="None",
            created_ms=now, updated_ms=now, user_id=token.name)
        rec = ingest_pb2.RegisteredModelRecord()
        rec.CopyFrom(model.rec)
        rec.updated_ms = now
        await self._save_version(token, "model_version.create", mv, rec)
        if model_id:
            await self._note_on_logged_model(model_id, model.rec.name, number, token)
        return {"model_version": self.version_json(model, mv)}

    async def _note_on_logged_model(self, model_id: str, name: str, number: int, token: Token) -> None:
        """The logged model lists its registered versions in its ``mlflow.modelVersions`` tag, as MLflow keeps it."""
        logged = (await self.api.get_logged_model({"model_id": model_id}, token))["model"]["info"]
        tags = {t["key"]: t["value"] for t in logged["tags"]}
        try:
            versions = json.loads(tags.get("mlflow.modelVersions") or "[]")
        except ValueError:
            versions = []
        versions.append({"name": name, "version": number})
        await self.api.set_logged_model_tags({"model_id": model_id, "tags": [
            {"key": "mlflow.modelVersions", "value": json.dumps(versions)}]}, token, "")

    async def _resolve(self, source: str, token: Token) -> tuple[str, str]:
        """A ``models:/`` source's files: a registered version's (``models:/name/3``, ``models:/name@alias``) or a
        logged model's (``models:/m-...``); and the run it came from."""
        rest = source[len("models:/"):].strip("/")
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            logged = await self.api.get_logged_model({"model_id": rest}, token)
            info = logged["model"]["info"]
            return str(info["artifact_uri"]), str(info.get("source_run_id") or "")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            found = (await self.version_by_alias({"name": name, "alias": alias}, token))["model_version"]
            model, mv = await self._version({"name": name, "version": found["version"]}, token)
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            model, mv = await self._version({"name": name, "version": version}, token)
        else:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Unable to fetch model from model URI source artifact location "
                                                         f"'{source}': expected models:/<name>/<version>, "
                                                         "models:/<name>@<alias> or models:/<model id>")
        return mv.storage_location or mv.source, mv.run_id

    async def get_version(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return {"model_version": self.version_json(*await self._version(body, token))}

    async def _change_version(self, body: dict[str, Any], token: Token, action: str, *, touches_model: bool,
                              **changes: Any) -> tuple[Model, ingest_pb2.ModelVersionRecord]:
        model, old = await self._version(body, token, "ingest")
        mv = ingest_pb2.ModelVersionRecord()
        mv.CopyFrom(old)
        for k, v in changes.items():
            if k == "tags":  # a map field is filled, not assigned
                mv.tags.clear()
                mv.tags.update(v)
            else:
                setattr(mv, k, v)
        mv.updated_ms = _now()
        rec = None
        if touches_model:
            rec = ingest_pb2.RegisteredModelRecord()
            rec.CopyFrom(model.rec)
            rec.updated_ms = mv.updated_ms
            if mv.deleted:  # MLflow drops the aliases of a deleted version
                for alias in [a for a, v in rec.aliases.items() if v == mv.version]:
                    del rec.aliases[alias]
        await self._save_version(token, action, mv, rec)
        return model, mv

    async def update_version(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model, mv = await self._change_version(body, token, "model_version.update", touches_model=False,
                                               description=_text(body, "description"))
        return {"model_version": self.version_json(model, mv)}

    async def transition_stage(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        stage = _stage(body.get("stage"))
        model, mv = await self._change_version(body, token, "model_version.transition_stage", touches_model=True,
                                               stage=stage)
        if str(body.get("archive_existing_versions", "")).lower() == "true" and stage in ("Staging", "Production"):
            for other in model.live():
                if other.version != mv.version and other.stage == stage:
                    await self._change_version({"name": model.rec.name, "version": other.version}, token,
                                               "model_version.transition_stage", touches_model=True, stage="Archived")
        return {"model_version": self.version_json(model, model.versions[mv.version])}

    async def delete_version(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        await self._change_version(body, token, "model_version.delete", touches_model=True, deleted=True)
        return {}

    async def download_uri(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        _, mv = await self._version(body, token)
        return {"artifact_uri": mv.storage_location or mv.source}

    async def set_version_tag(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model, old = await self._version(body, token, "ingest")
        tags = dict(old.tags)
        tags[_key(body)] = _text(body, "value")
        await self._change_version(body, token, "model_version.set_tag", touches_model=False, tags=tags)
        return {}

    async def delete_version_tag(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        model, old = await self._version(body, token, "ingest")
        key = _key(body)
        if key in old.tags:
            tags = {k: v for k, v in old.tags.items() if k != key}
            await self._change_version(body, token, "model_version.delete_tag", touches_model=False, tags=tags)
        return {}

    async def search_versions(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        await self._ready()
        conds = parse_filter(body.get("filter"), attrs=VERSION_ATTRS)
        orders = parse_order_by(as_list(body.get("order_by")), attrs=VERSION_ATTRS)
        limit = _limit(body, VERSIONS_DEFAULT, VERSIONS_MAX)
        found = []
        for model in self._visible(token):
            for mv in model.live():
                attrs = {"name": model.rec.name, "run_id": mv.run_id, "source_path": mv.source,
                         "version_number": mv.version, "model_id": mv.model_id, "creation_timestamp": mv.created_ms,
                         "last_updated_timestamp": mv.updated_ms, "timestamp": mv.updated_ms}
                if matches(conds, attrs, dict(mv.tags), absent_differs=True):
                    found.append((attrs, (model, mv)))
        default = [Order("attr", "last_updated_timestamp", False), Order("attr", "name", True),
                   Order("attr", "version_number", False)]
        ordered = _ordered(found, orders, default=default, ties=default[1:])
        return _paged(body, [self.version_json(m, mv) for _, (m, mv) in ordered], limit, "model_versions")


# ---- field helpers (MLflow's wording) ----

def checked_source(source: str, by: str) -> None:
    """A version's source as MLflow's server checks it: never a local path (runstream keeps a run's files behind the
    artifact proxy, so no local path is inside a run's artifacts) and never a path that climbs with '..' or hides
    a NUL anywhere (the host too), however percent-encoded."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a path, a file: URI, a Windows drive
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid model version source: '{source}'. To use a local path as "
                          f"a model version source, the {by} request parameter has to be specified and the local path "
                          f"has to be contained within the artifact directory of the run specified by the {by}.")
    text = source
    while (unquoted := urllib.parse.unquote_plus(text)) != text:
        text = unquoted
    path = re.sub(r"/+", "/", urllib.parse.urlparse(text).path.rstrip("/"))
    if "\x00" in text or ".." in text.split("/") or posixpath.normpath(path or "/") != (path or "/"):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid model version source: '{source}'. If supplying a source "
                          "as an http, https, local file path, ftp, objectstore, or mlflow-artifacts uri, an absolute "
                          "path must be provided without relative path references present. Please provide an "
                          "absolute path.")


def _name(value: Any, field: str = "name") -> str:
    if value is None or value == "":
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{field}'.")
    if not isinstance(value, str):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value {value!r} for parameter '{field}' supplied: "
                                                     "expected a string")
    if len(value) > 256 or "\x00" in value or "/" in value or ":" in value:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid model name {value[:60]!r}: at most 256 characters, "
                                                     "no '/', ':' or NUL")
    return value


def _version_number(value: Any) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Parameter 'version' must be an integer, got '{value}'.") from None
    if number < 1:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Parameter 'version' must be a positive integer, got '{value}'.")
    return number


def _stage(value: Any) -> str:
    stage = STAGES.get(str(value or "").lower())
    if stage is None:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid Model Version stage: {value}. Value must be one of "
                                                     f"{', '.join(STAGES.values())}.")
    return stage


def _alias(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise MlflowError("INVALID_PARAMETER_VALUE", "Missing value for required parameter 'alias'.")
    if value.lower() == "latest" or (value[:1] in "vV" and value[1:].isdigit()) or len(value) > 255:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid alias name: '{value}'. Aliases cannot be 'latest', "
                                                     "v<number>, or longer than 255 characters.")
    return value


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value {value!r} for parameter '{key}' supplied: "
                                                     "expected a string")
    return str(value)


def _key(body: dict[str, Any]) -> str:
    key = _text(body, "key")
    if not key:
        raise MlflowError("INVALID_PARAMETER_VALUE", "Missing value for required parameter 'key'.")
    return key


def _tags(body: dict[str, Any]) -> dict[str, str]:
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, dict) and t.get("key") for t in tags):
        raise MlflowError("INVALID_PARAMETER_VALUE", "Invalid value for parameter 'tags' supplied: expected a list "
                                                     "of {key, value} objects")
    return _pairs(tags)


def _limit(body: dict[str, Any], default: int, most: int) -> int:
    raw = body.get("max_results")
    try:
        limit = default if raw in (None, "") else int(raw)
    except (TypeError, ValueError):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value {raw!r} for parameter 'max_results' supplied") from None
    if not 1 <= limit <= most:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value for max_results. It must be at most {most}, "
                                                     f"but got value {limit}")
    return limit


def _project_for(token: Token) -> str:
    """The project a new registered model belongs to: the token's one project, else the default one."""
    named = sorted(p for p in token.projects if p != "*")
    return named[0] if len(named) == 1 and "*" not in token.projects else DEFAULT_PROJECT


def _ordered(found: list[tuple[dict[str, Any], Any]], orders: list[Order], *, default: list[Order],
             ties: list[Order]) -> list[tuple[dict[str, Any], Any]]:
    """Sorted by ``orders`` then ``ties`` (MLflow's tie-breakers), or by ``default`` when none are given."""
    for o in reversed(orders + ties if orders else default):
        if o.kind != "attr":
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid order_by key {o.key!r}: order by attributes only")
        key = o.key
        found.sort(key=lambda item: item[0][key], reverse=not o.ascending)
    return found


def _paged(body: dict[str, Any], items: list[dict[str, Any]], limit: int, key: str) -> dict[str, Any]:
    offset = page_offset(body.get("page_token"))
    out: dict[str, Any] = {key: items[offset:offset + limit]}
    if offset + limit < len(items):
        out["next_page_token"] = next_page(offset + limit)
    return out
