"""The viewer web app (starlette): plot pages, their JSON, thumbnails, contact sheets and the
saved-views API, over one store. Served on the loopback interface only.

Routes:

- ``GET /``: links to every visualization run and the saved views;
- ``GET /plot/<dataset>/<brain_key>``: the interactive plot of a visualization run;
- ``GET /api/plot/<dataset>/<brain_key>``: its points (ids, sample ids, x, y) and colour fields;
- ``GET /api/colour/<dataset>/<brain_key>?field=label:<field>|score:<brain_key>``: one colour
  field's value per point;
- ``GET /thumb/<dataset>/<sample_id>``: a PNG thumbnail of the sample's image;
- ``GET /sheet/<dataset>/<brain_key>?n=50``: a contact sheet of a scored run's top items;
- ``GET /api/views/<dataset>``, ``POST /api/views/<dataset>`` (``{"name", "sample_ids",
  "source"}``): list and save views.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dagster_brain.names import BrainNameError, check_name
from dagster_brain.store import Store, StoreError
from dagster_brain.viewer import data, page

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _error(err: Exception) -> JSONResponse:
    status = err.status if isinstance(err, data.ViewerError) else 400
    if isinstance(err, StoreError) and " has no " in str(err):
        status = 404
    return JSONResponse({"error": str(err)}, status_code=status)


def _guard(fn):
    """Answer the viewer's and store's refusals as JSON ``{"error": ...}`` with a 4xx."""

    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except (data.ViewerError, BrainNameError, StoreError, ValueError) as err:
            return _error(err)

    return handler


def build_app(store: Store | str | os.PathLike) -> Starlette:
    """The viewer over one store (a :class:`Store` or its data directory)."""
    from starlette.concurrency import run_in_threadpool

    db = store if isinstance(store, Store) else Store(store)

    def call(fn, *args):  # store reads block: keep them off the event loop
        return run_in_threadpool(fn, *args)

    async def index(request: Request) -> Response:
        def build() -> str:
            runs = data.visualization_runs(db)
            views = {
                d: [(r.name, int(r.n)) for r in db.saved_views(d).itertuples()]
                for d in db.list_datasets()
            }
            return page.index_page(runs, views)

        return HTMLResponse(await call(build))

    async def plot(request: Request) -> Response:
        dataset, key = request.path_params["dataset"], request.path_params["brain_key"]
        await call(data.require_plot, db, dataset, key)
        field = await call(data.default_field, db, dataset, key)
        return HTMLResponse(page.plot_page(dataset, key, field))

    async def plot_json(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(await call(data.plot_data, db, p["dataset"], p["brain_key"]))

    async def colour_json(request: Request) -> Response:
        p = request.path_params
        field = request.query_params.get("field")
        if not field:
            raise data.ViewerError("give the colour field: ?field=label:<field> or score:<key>")
        return JSONResponse(await call(data.colour_values, db, p["dataset"], p["brain_key"], field))

    async def thumb(request: Request) -> Response:
        from dagster_brain.contact_sheet import thumbnail_data_uri

        dataset, sample_id = request.path_params["dataset"], request.path_params["sample_id"]
        check_name(dataset, "dataset")
        path = await call(data.sample_filepath, db, dataset, sample_id)
        uri = await call(thumbnail_data_uri, path)
        if uri is None:
            raise data.ViewerError(
                f"dataset {dataset!r}: the image of sample {sample_id!r} ({path}) cannot be read",
                404,
            )
        png = base64.b64decode(uri.split(",", 1)[1])
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def sheet(request: Request) -> Response:
        p = request.path_params
        n = int(request.query_params.get("n", "50"))
        return HTMLResponse(await call(_contact_sheet, db, p["dataset"], p["brain_key"], n))

    async def views(request: Request) -> Response:
        dataset = request.path_params["dataset"]
        check_name(dataset, "dataset")
        if request.method == "GET":
            frame = await call(db.saved_views, dataset)
            frame["created_at"] = frame["created_at"].astype(str)
            return JSONResponse({"dataset": dataset, "views": frame.to_dict("records")})
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as err:
            raise data.ViewerError(f"the request body is not JSON ({err})") from err
        name, ids = body.get("name"), body.get("sample_ids")
        if not isinstance(ids, list) or not ids:
            raise data.ViewerError(
                f"view {name!r} of dataset {dataset!r}: select some points first "
                "(sample_ids is empty)"
            )
        ids = list(dict.fromkeys(str(i) for i in ids))
        source = body.get("source")
        await call(lambda: db.save_view(dataset, name, ids, source=source))
        n = len(ids)
        return JSONResponse({"dataset": dataset, "name": name, "n": n}, status_code=201)

    async def report(request: Request) -> Response:
        from dagster_brain.health_report import report_path

        dataset = request.path_params["dataset"]
        check_name(dataset, "dataset")
        path = report_path(db, dataset)
        if not path.exists():
            raise data.ViewerError(
                f"dataset {dataset!r} has no health report yet: materialise "
                f"{dataset}/brain/health_report or run `brain report {dataset}`",
                404,
            )
        return FileResponse(path, media_type="text/html")

    async def plotly_js(request: Request) -> Response:
        return FileResponse(
            page.plotly_js_path(),
            media_type="application/javascript",
            headers={"Cache-Control": "max-age=86400"},
        )

    routes = [
        Route("/", index),
        Route("/plot/{dataset}/{brain_key}", _guard(plot)),
        Route("/api/plot/{dataset}/{brain_key}", _guard(plot_json)),
        Route("/api/colour/{dataset}/{brain_key}", _guard(colour_json)),
        Route("/thumb/{dataset}/{sample_id}", _guard(thumb)),
        Route("/sheet/{dataset}/{brain_key}", _guard(sheet)),
        Route("/report/{dataset}", _guard(report)),
        Route("/api/views/{dataset}", _guard(views), methods=["GET", "POST"]),
        Route(page.PLOTLY_JS_ROUTE, plotly_js),
    ]
    app = Starlette(routes=routes)
    app.state.store = db
    return app


def _contact_sheet(db: Store, dataset: str, brain_key: str, n: int) -> str:
    """The top ``n`` items of a scored brain run as a contact sheet."""
    from dagster_brain.contact_sheet import contact_sheet
    from dagster_brain.methods import get_method

    check_name(dataset, "dataset")
    record = db.get_run(dataset, brain_key)
    score = get_method(record.kind, brain_key).score
    if score is None:
        raise data.ViewerError(
            f"brain run {brain_key!r} of dataset {dataset!r} is a {record.kind} run: no scores"
        )
    rows = db.load_results(dataset, brain_key)
    rows = rows.sort_values(score.column, ascending=score.ascending).head(max(n, 1))
    paths = db.samples(dataset, sorted(set(rows["sample_id"]))).set_index("sample_id")
    rows = rows.assign(filepath=rows["sample_id"].map(paths["filepath"]))
    return contact_sheet(rows, score.column, f"{dataset}/{brain_key}: top {len(rows)}")


def check_host(host: str) -> str:
    """Refuse any address but the loopback one: the viewer writes to the store, unauthenticated."""
    if host not in LOOPBACK:
        raise ValueError(
            f"viewer host {host!r}: the viewer only listens on the loopback interface "
            f"({', '.join(LOOPBACK)}); reach it from elsewhere through an SSH tunnel"
        )
    return host


def serve(data_dir: str | Path, host: str = "127.0.0.1", port: int = 3100) -> None:
    """Run the viewer until interrupted."""
    import uvicorn

    uvicorn.run(build_app(data_dir), host=check_host(host), port=port, log_level="warning")
