"""MLflow's own web UI, served by the mlflow role over runstream's runs.

The UI is the React build shipped in the full ``mlflow`` wheel (``pip install 'runstream[mlflow-ui]'``); runstream
serves its files and answers what its experiment list, runs table, run page (params, metrics chart, artifacts) and
compare view ask: the ``/ajax-api`` REST calls (the tracking API's handlers), a few UI-only calls, and ``/graphql``
(MLflow's GraphQL schema, executed by graphql-core over the same handlers). Every request needs a token, as the API
does: a browser signs in with basic auth (any user name, a runstream token as the password) and sends it with every
call after that. The GenAI views (traces, judges, prompts, the assistant, the AI gateway) get empty answers: runstream
stores no traces.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import graphql
from aiohttp import web

from runstream.mlflow.protocol import MlflowError, as_mlflow_error, request_fields
from runstream.server.auth import Token

# MLflow's GraphQL schema (mlflow/server/graphql), the part its UI queries: names and types as MLflow has them.
SCHEMA = """
directive @component(name: String!) on QUERY | MUTATION

scalar LongString

type Query {
  mlflowGetExperiment(input: MlflowGetExperimentInput): MlflowGetExperimentResponse
  mlflowGetMetricHistoryBulkInterval(input: MlflowGetMetricHistoryBulkIntervalInput): MlflowGetMetricHistoryBulkIntervalResponse
  mlflowGetRun(input: MlflowGetRunInput): MlflowGetRunResponse
  mlflowListArtifacts(input: MlflowListArtifactsInput): MlflowListArtifactsResponse
  mlflowSearchModelVersions(input: MlflowSearchModelVersionsInput): MlflowSearchModelVersionsResponse
  test(inputString: String): Test
  mlflowSearchRuns(input: MlflowSearchRunsInput): MlflowSearchRunsResponse
}

type Mutation {
  mlflowSearchDatasets(input: MlflowSearchDatasetsInput): MlflowSearchDatasetsResponse
  mlflowSearchRuns(input: MlflowSearchRunsInput): MlflowSearchRunsResponse
  testMutation(inputString: String): TestMutation
}

type Test { output: String }
type TestMutation { output: String }

type ApiError { code: String message: String helpUrl: String traceId: String errorDetails: [ErrorDetail] }
type ErrorDetail { field: String message: String }

type MlflowExperimentTag { key: String value: String }
type MlflowExperiment {
  experimentId: String name: String artifactLocation: String lifecycleStage: String lastUpdateTime: LongString
  creationTime: LongString tags: [MlflowExperimentTag!] effectiveTraceArchivalRetention: String workspace: String
}
input MlflowGetExperimentInput { experimentId: String }
type MlflowGetExperimentResponse { experiment: MlflowExperiment apiError: ApiError }

type MlflowMetricWithRunId { key: String value: Float timestamp: LongString step: LongString runId: String }
input MlflowGetMetricHistoryBulkIntervalInput {
  runIds: [String] metricKey: String startStep: Int endStep: Int maxResults: Int
}
type MlflowGetMetricHistoryBulkIntervalResponse { metrics: [MlflowMetricWithRunId!] apiError: ApiError }

enum MlflowRunStatus { RUNNING SCHEDULED FINISHED FAILED KILLED }
type MlflowRunInfo {
  runId: String runUuid: String runName: String experimentId: String userId: String status: MlflowRunStatus
  startTime: LongString endTime: LongString artifactUri: String lifecycleStage: String
}
type MlflowMetricExtension {
  key: String value: Float timestamp: LongString step: LongString datasetName: String datasetDigest: String
  modelId: String runId: String
}
type MlflowParam { key: String value: String }
type MlflowRunTag { key: String value: String }
type MlflowRunData { metrics: [MlflowMetricExtension!] params: [MlflowParam!] tags: [MlflowRunTag!] }
type MlflowInputTag { key: String value: String }
type MlflowDataset { name: String digest: String sourceType: String source: String schema: String profile: String }
type MlflowDatasetInput { tags: [MlflowInputTag!] dataset: MlflowDataset }
type MlflowModelInput { modelId: String }
type MlflowRunInputs { datasetInputs: [MlflowDatasetInput!] modelInputs: [MlflowModelInput!] }
type MlflowModelOutput { modelId: String step: LongString }
type MlflowRunOutputs { modelOutputs: [MlflowModelOutput!] }

enum MlflowModelVersionStatus { PENDING_REGISTRATION FAILED_REGISTRATION READY }
enum MlflowDeploymentJobConnectionState {
  DEPLOYMENT_JOB_CONNECTION_STATE_UNSPECIFIED NOT_SET_UP CONNECTED NOT_FOUND REQUIRED_PARAMETERS_CHANGED
}
enum MlflowModelVersionDeploymentJobStateDeploymentJobRunState {
  DEPLOYMENT_JOB_RUN_STATE_UNSPECIFIED NO_VALID_DEPLOYMENT_JOB_FOUND RUNNING SUCCEEDED FAILED PENDING APPROVAL
}
type MlflowModelVersionDeploymentJobState {
  jobId: String runId: String jobState: MlflowDeploymentJobConnectionState
  runState: MlflowModelVersionDeploymentJobStateDeploymentJobRunState currentTaskName: String
}
type MlflowModelVersionTag { key: String value: String }
type MlflowModelParam { name: String value: String }
type MlflowModelMetric {
  key: String value: Float timestamp: LongString step: LongString datasetName: String datasetDigest: String
  modelId: String runId: String
}
type MlflowModelVersion {
  name: String version: String creationTimestamp: LongString lastUpdatedTimestamp: LongString userId: String
  currentStage: String description: String source: String runId: String status: MlflowModelVersionStatus
  statusMessage: String tags: [MlflowModelVersionTag!] runLink: String aliases: [String] modelId: String
  modelParams: [MlflowModelParam!] modelMetrics: [MlflowModelMetric!]
  deploymentJobState: MlflowModelVersionDeploymentJobState
}

type MlflowRunExtension {
  info: MlflowRunInfo data: MlflowRunData inputs: MlflowRunInputs outputs: MlflowRunOutputs
  experiment: MlflowExperiment modelVersions: [MlflowModelVersion!]
}
input MlflowGetRunInput { runId: String runUuid: String }
type MlflowGetRunResponse { run: MlflowRunExtension apiError: ApiError }

enum MlflowViewType { ACTIVE_ONLY DELETED_ONLY ALL }
input MlflowSearchRunsInput {
  experimentIds: [String] filter: String runViewType: MlflowViewType = null maxResults: Int orderBy: [String]
  pageToken: String
}
type MlflowSearchRunsResponse { runs: [MlflowRunExtension!] nextPageToken: String apiError: ApiError }

type MlflowFileInfo { path: String isDir: Boolean fileSize: LongString }
input MlflowListArtifactsInput { runId: String runUuid: String path: String pageToken: String }
type MlflowListArtifactsResponse { rootUri: String files: [MlflowFileInfo!] nextPageToken: String apiError: ApiError }

input MlflowSearchModelVersionsInput { filter: String maxResults: LongString orderBy: [String] pageToken: String }
type MlflowSearchModelVersionsResponse { modelVersions: [MlflowModelVersion!] nextPageToken: String apiError: ApiError }

type MlflowDatasetSummary { experimentId: String name: String digest: String context: String }
input MlflowSearchDatasetsInput { experimentIds: [String] }
type MlflowSearchDatasetsResponse { datasetSummaries: [MlflowDatasetSummary!] apiError: ApiError }
"""

MAX_QUERY_BYTES = 64 * 1024
# MLflow's bounds on a query's shape (mlflow/server/graphql/graphql_no_batching.py), with its messages.
MAX_ROOT_FIELDS = 10
MAX_ALIASES = 10
MAX_DEPTH = 10
MAX_SELECTIONS = 1000


def shape_problem(doc: graphql.DocumentNode) -> str:
    """Why a query is refused before it runs ("" when it is not): too many root fields, aliases at one level,
    nesting levels or selections in all, counting fragments where they are spread (each at most once per path)."""
    fragments = {d.name.value: d for d in doc.definitions if isinstance(d, graphql.FragmentDefinitionNode)}
    roots = aliases = selections = 0
    for op in doc.definitions:
        if not isinstance(op, graphql.OperationDefinitionNode):
            continue
        stack: list[tuple[graphql.SelectionSetNode, int, frozenset[str]]] = [(op.selection_set, 1, frozenset())]
        while stack:
            selection_set, depth, seen = stack.pop()
            if depth > MAX_DEPTH:
                return f"Query exceeds maximum depth of {MAX_DEPTH}"
            pending, fields, level_aliases, visited = list(selection_set.selections), [], 0, set(seen)
            while pending:
                node = pending.pop()
                if isinstance(node, graphql.FieldNode):
                    fields.append(node)
                    level_aliases += node.alias is not None
                elif isinstance(node, graphql.InlineFragmentNode):
                    pending.extend(node.selection_set.selections)
                elif isinstance(node, graphql.FragmentSpreadNode) and node.name.value not in visited:
                    visited.add(node.name.value)
                    if (frag := fragments.get(node.name.value)) is not None:
                        pending.extend(frag.selection_set.selections)
            for f in fields:
                roots += depth == 1
                selections += 1
                if selections > MAX_SELECTIONS:
                    return f"Query exceeds maximum total selections of {MAX_SELECTIONS}"
                if f.selection_set is not None:
                    stack.append((f.selection_set, depth + 1, seen))
            aliases = max(aliases, level_aliases)
    if roots > MAX_ROOT_FIELDS:
        return f"GraphQL queries should have at most {MAX_ROOT_FIELDS} root fields, got {roots} root fields"
    if aliases > MAX_ALIASES:
        return f"GraphQL queries should have at most {MAX_ALIASES} aliases, got {aliases} aliases"
    return ""

Body = dict[str, Any]


class Handlers(Protocol):
    """What the UI asks of the tracking API (MlflowApi): its handlers, each taking a request's fields and a token."""

    async def get_experiment(self, body: Body, token: Token) -> Body: ...
    async def get_run(self, body: Body, token: Token) -> Body: ...
    async def search_runs(self, body: Body, token: Token) -> Body: ...
    async def list_run_artifacts(self, body: Body, token: Token) -> Body: ...
    async def metric_history_bulk_interval(self, body: Body, token: Token) -> Body: ...
    async def search_datasets(self, body: Body, token: Token) -> Body: ...
    async def search_model_versions(self, body: Body, token: Token) -> Body: ...


def ui_build_dir() -> Path | None:
    """The UI's build folder in the installed ``mlflow`` wheel, found without importing mlflow (seconds of imports);
    None where only mlflow-skinny (which has no UI) or no mlflow is installed."""
    try:
        spec = importlib.util.find_spec("mlflow")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        build = Path(root) / "server" / "js" / "build"
        if (build / "index.html").is_file():
            return build
    return None


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camel(obj: Any) -> Any:
    """The REST API's JSON (snake_case fields) as GraphQL names them (camelCase); values are left alone."""
    if isinstance(obj, dict):
        return {_camel_key(k): camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


def snake(obj: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL input (camelCase fields) as the REST handlers take it."""
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in obj.items() if v is not None}


def _finite(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GraphQL's Float has no NaN or infinity (the REST API writes them as strings): such a value is null here."""
    for m in metrics:
        if not isinstance(m.get("value"), (int, float)) or not math.isfinite(m["value"]):
            m["value"] = None
    return metrics


class MlflowUi:
    """The UI's files and ``/graphql``, over the tracking API's handlers."""

    def __init__(self, api: Handlers, build: Path | None) -> None:
        self.api = api
        self.build = build
        self._schema: Any = None

    # ---- GraphQL ----

    def schema(self) -> Any:
        if self._schema is None:
            schema = graphql.build_schema(SCHEMA)
            schema.type_map["LongString"].serialize = str  # type: ignore[attr-defined]  # a scalar: MLflow writes longs as strings
            resolvers: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
                "mlflowGetExperiment": self._get_experiment, "mlflowGetRun": self._get_run,
                "mlflowSearchRuns": self._search_runs, "mlflowListArtifacts": self._list_artifacts,
                "mlflowGetMetricHistoryBulkInterval": self._history, "mlflowSearchModelVersions": self._model_versions,
                "mlflowSearchDatasets": self._datasets,
            }
            for root in (schema.query_type, schema.mutation_type):
                for name, fld in root.fields.items():  # type: ignore[union-attr]
                    if name in resolvers:
                        fld.resolve = self._resolver(resolvers[name])
                    elif name in ("test", "testMutation"):
                        fld.resolve = lambda _root, _info, inputString=None: {"output": inputString}
            self._schema = schema
        return self._schema

    @staticmethod
    def _resolver(call: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def resolve(_root: Any, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
            try:
                return await call(snake(dict(input or {})), info.context["token"])
            except Exception as exc:  # an API error is data in MLflow's schema, beside a null result
                err = as_mlflow_error(exc)
                return {"apiError": {"code": err.code, "message": str(err)}}
        return resolve

    async def _experiments(self, ids: set[str], token: Token) -> dict[str, Any]:
        out = {}
        for exp_id in ids:
            try:
                out[exp_id] = camel((await self.api.get_experiment({"experiment_id": exp_id}, token))["experiment"])
            except Exception:  # a run the token may read in an experiment it may not list: the run shows alone
                out[exp_id] = None
        return out

    async def _runs(self, runs: list[dict[str, Any]], token: Token) -> list[dict[str, Any]]:
        exps = await self._experiments({r["info"]["experiment_id"] for r in runs}, token)
        out = []
        for r in runs:
            run = camel(r)
            _finite(run["data"]["metrics"])
            run["experiment"] = exps[r["info"]["experiment_id"]]
            run["modelVersions"] = await self._versions_of(r["info"]["run_id"], token)
            inputs = run.setdefault("inputs", {})
            inputs.setdefault("datasetInputs", [])
            inputs.setdefault("modelInputs", [])
            run.setdefault("outputs", {"modelOutputs": []})
            out.append(run)
        return out

    async def _get_experiment(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return camel(await self.api.get_experiment(body, token))

    async def _get_run(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        run = (await self.api.get_run(body, token))["run"]
        return {"run": (await self._runs([run], token))[0]}

    async def _search_runs(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        found = await self.api.search_runs(body, token)
        return {"runs": await self._runs(found.get("runs", []), token), "nextPageToken": found.get("next_page_token")}

    async def _list_artifacts(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        found = camel(await self.api.list_run_artifacts(body, token))
        # A folder's size is the proto's default here, as MLflow's GraphQL answers; REST leaves it out.
        return {**found, "files": [{"fileSize": 0, **f} for f in found.get("files", [])]}

    async def _history(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        found = camel(await self.api.metric_history_bulk_interval(body, token))
        return {"metrics": _finite(found.get("metrics", []))}

    async def _model_versions(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return camel(await self.api.search_model_versions(body, token))

    async def _versions_of(self, run_id: str, token: Token) -> list[dict[str, Any]]:
        """The registered versions made from a run (its page lists them)."""
        found = await self.api.search_model_versions({"filter": f"run_id = '{run_id}'"}, token)
        return [camel(v) for v in found.get("model_versions", [])]

    async def _datasets(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        found = camel(await self.api.search_datasets(body, token))
        # GraphQL answers a proto field's default where REST leaves the field out.
        return {"datasetSummaries": [{"context": "", **d} for d in found.get("datasetSummaries", [])]}

    async def graphql(self, request: web.Request, token: Token) -> web.Response:
        body = await request_fields(request)
        query = body.get("query")
        if not isinstance(query, str) or len(query) > MAX_QUERY_BYTES:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"query: a GraphQL document of at most {MAX_QUERY_BYTES} bytes")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise MlflowError("INVALID_PARAMETER_VALUE", "variables: a JSON object")
        # As MLflow answers: 200, the data, and the errors' messages (a refused or malformed query: data null).
        try:
            doc = graphql.parse(query)
        except graphql.GraphQLError as exc:
            return web.json_response({"data": None, "errors": [exc.message]})
        if problem := shape_problem(doc):
            return web.json_response({"data": None, "errors": [problem]})
        result = await graphql.graphql(self.schema(), query, variable_values=variables,
                                       operation_name=body.get("operationName"), context_value={"token": token})
        return web.json_response({"data": result.data,
                                  "errors": [e.message for e in result.errors] if result.errors else None})

    # ---- files ----

    def file(self, path: str) -> web.StreamResponse:
        """A file of the UI's build; index.html for the root (the UI routes by the URL's fragment)."""
        if self.build is None:
            raise MlflowError("ENDPOINT_NOT_FOUND", "MLflow's web UI is not installed on this server: install "
                                                    "'runstream[mlflow-ui]' (the full mlflow wheel carries the UI)")
        root = self.build.resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"{path[:200]!r}: no such file in the UI")
        cache = "no-cache" if target.name == "index.html" else "max-age=2419200"
        return web.FileResponse(target, headers={"Cache-Control": cache})


# UI-only calls with nothing behind them in runstream: MLflow's own answers for an empty store.
EMPTY_ANSWERS: dict[str, dict[str, Any]] = {
    "/ajax-api/3.0/mlflow/server-info": {
        "store_type": "runstream", "workspaces_enabled": False, "trace_archival_enabled": False,
        "multipart_uploads_enabled": False, "multipart_downloads_enabled": False,
        "presigned_upload_run_id_supported": False, "presigned_upload_model_id_supported": False,
        "features_enabled": {"gateway": False}},
    "/ajax-api/3.0/mlflow/ui-telemetry": {"disable_ui_events": [], "disable_ui_telemetry": True,
                                          "ui_rollout_percentage": 0},
    "/ajax-api/3.0/mlflow/assistant/config": {"providers": {}, "projects": {}, "remote_access_allowed": False},
    "/ajax-api/3.0/mlflow/assistant/providers": {"providers": []},
    "/ajax-api/3.0/mlflow/traces/metrics": {},
    "/ajax-api/2.0/mlflow/gateway-proxy": {"endpoints": []},
}

